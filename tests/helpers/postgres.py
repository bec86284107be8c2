"""A real PostgreSQL from Debian's packages, started in a temporary directory on loopback.

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` system user
(created by the Debian package) through `runuser`; its directory is handed to that user.
`missing_reason()` says why no server can start here (the caller skips, or fails under CI).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.helpers.challtestsrv import free_port

SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
TEMPLATE = "certbroker_template"


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin (Debian), else the directory of `initdb` on
    PATH."""
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "initdb").exists() and candidate.parent.name.isdigit():
            versions.append((int(candidate.parent.name), candidate))
    if versions:
        return max(versions)[1]
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _as_root() -> bool:
    return os.geteuid() == 0


def missing_reason() -> str | None:
    """None when a server can start here; otherwise what is missing."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        return (
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH): "
            "run scripts/setup test to install Debian's postgresql package"
        )
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (bin_dir / tool).exists():
            return f"{bin_dir / tool} is missing"
    if _as_root():
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return "running as root but there is no 'postgres' system user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` (util-linux) is missing"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL cannot run here; under CI fail instead, because a
    skipped test must never pass for a run test there."""
    import pytest

    reason = missing_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"PostgreSQL tests must run in CI (CI=true): {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests not run: {reason}")


class PostgresServer:
    """One cluster: `initdb` then `pg_ctl start` on 127.0.0.1:<free port>, sockets in the temp
    dir. Durability is off (fsync, synchronous_commit): this data lives for one test session."""

    def __init__(self) -> None:
        reason = missing_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self.bin_dir = _bin_dir() or Path()
        self.base = Path(tempfile.mkdtemp(prefix="certbroker-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sockets"
        self.log_path = self.base / "server.log"
        self.port = free_port()
        self._running = False
        self.socket_dir.mkdir()
        if _as_root():
            user = pwd.getpwnam(SYSTEM_USER)
            for path in (self.base, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if _as_root():
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd="/")
        if result.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}{log[-4000:]}"
            )
        return result

    def start(self) -> PostgresServer:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = " ".join(
            [
                "-h 127.0.0.1",
                f"-p {self.port}",
                f"-k {self.socket_dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=64MB",
            ]
        )
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options, "-w",
            "-t", "60", "start",
        )  # fmt: skip
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of one database on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as connection:
            for statement in statements:
                connection.execute(statement.encode())

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (copied from `template` when given); returns its URL."""
        _check_name(name)
        clause = ""
        if template is not None:
            _check_name(template)
            clause = f" TEMPLATE {template}"
        self._admin(f"CREATE DATABASE {name}{clause}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        _check_name(name)
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def migrated_template(self) -> str:
        """Once per server: a database holding the migrated schema, to copy per test."""
        from certbroker.store.db import Database

        if not getattr(self, "_template_ready", False):
            db = Database(self.create_database(TEMPLATE))
            try:
                db.upgrade()
            finally:
                db.dispose()
            self._template_ready = True
        return TEMPLATE

    def fresh_database(self) -> tuple[str, str]:
        """A migrated, empty database of its own: (name, URL)."""
        name = f"t_{secrets.token_hex(6)}"
        return name, self.create_database(name, template=self.migrated_template())


def _check_name(name: str) -> None:
    # Database names go into SQL text: only names this module makes are accepted.
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"unexpected database name {name!r}")
