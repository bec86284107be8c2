"""The master-key ring: several AES-256 keys with ids, one of them current.

Sources, in order of precedence:
- `CERTBROKER_MASTER_KEYS` (JSON `{"id": "key", ...}`) with `CERTBROKER_MASTER_KEY_ID` naming
  the current key; or `CERTBROKER_MASTER_KEY` alone (id `CERTBROKER_MASTER_KEY_ID`, default
  `k1`). Environment keys are fixed for the life of the process.
- Otherwise the data directory: `master-keys.json` (written by `certbroker keys rotate`), or
  before the first rotation `master.key`, the single key `k1` made on first start.

Rotation without downtime: `rotate` adds a key and makes it current in the ring file, then
`reencrypt` rewrites every ciphertext in small batches, one transaction each. A running server
notices the new ring file before its next encryption and reloads it when it meets a ciphertext
under a key id it does not know. Old keys stay in the ring until `retire` removes them, which it
refuses while any ciphertext still uses them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, select, update
from sqlalchemy.orm import InstrumentedAttribute

from certbroker.pki.secretbox import SecretBox, SecretBoxError, generate_master_key
from certbroker.settings import Settings
from certbroker.store.db import Database
from certbroker.store.models import (
    Certificate,
    Order,
    OutgoingMail,
    UpstreamAccount,
    WebhookEndpoint,
)

RING_FILE = "master-keys.json"
LEGACY_KEY_FILE = "master.key"
LEGACY_KEY_ID = "k1"
_LOCK_FILE = ".master-keys.lock"
_TOKEN_PREFIX = "v1:"  # noqa: S105 - the SecretBox format tag


class KeyRingError(ValueError):
    """The key configuration is unusable, or an operation on it is refused."""


@dataclass(frozen=True)
class Ring:
    keys: dict[str, str]  # id -> urlsafe base64 key
    current: str

    def box(self) -> SecretBox:
        return SecretBox(self.keys, self.current)


# --- where the ring comes from ----------------------------------------------------------------


def env_ring(settings: Settings) -> Ring | None:
    """The ring given by settings (environment or TOML), or None when the data dir holds it."""
    if settings.master_keys is not None:
        try:
            keys = json.loads(settings.master_keys.get_secret_value())
        except ValueError:
            raise KeyRingError("CERTBROKER_MASTER_KEYS is not valid JSON") from None
        if not (
            isinstance(keys, dict)
            and keys
            and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items())
        ):
            raise KeyRingError('CERTBROKER_MASTER_KEYS must be a JSON object {"id": "key", ...}')
        if settings.master_key is not None:
            raise KeyRingError("set CERTBROKER_MASTER_KEYS or CERTBROKER_MASTER_KEY, not both")
        current = settings.master_key_id
        if current is None:
            if len(keys) != 1:
                raise KeyRingError(
                    "CERTBROKER_MASTER_KEY_ID must name the current key of CERTBROKER_MASTER_KEYS"
                )
            current = next(iter(keys))
        return _checked(Ring(dict(keys), current))
    if settings.master_key is not None:
        key_id = settings.master_key_id or LEGACY_KEY_ID
        return _checked(Ring({key_id: settings.master_key.get_secret_value()}, key_id))
    return None


def _checked(ring: Ring) -> Ring:
    try:
        ring.box()
    except ValueError as exc:  # the message names key ids only, never key material
        raise KeyRingError(str(exc)) from None
    return ring


def read_file_ring(data_dir: Path) -> Ring | None:
    """The ring kept in the data directory, or None if there is none yet."""
    path = data_dir / RING_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            ring = Ring(dict(raw["keys"]), str(raw["current"]))
        except (ValueError, KeyError, TypeError):
            raise KeyRingError(f"{path} is not a valid key ring file") from None
        return _checked(ring)
    legacy = data_dir / LEGACY_KEY_FILE
    if legacy.exists():
        return _checked(Ring({LEGACY_KEY_ID: legacy.read_text().strip()}, LEGACY_KEY_ID))
    return None


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file created 0600 from its first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_file_ring(data_dir: Path, ring: Ring) -> None:
    _checked(ring)
    text = json.dumps({"current": ring.current, "keys": ring.keys}, indent=2, sort_keys=True)
    _write_private(data_dir / RING_FILE, text + "\n")


def ensure_file_ring(data_dir: Path) -> Ring:
    """First start: make the single key `k1` in `master.key` (0600)."""
    ring = read_file_ring(data_dir)
    if ring is not None:
        return ring
    legacy = data_dir / LEGACY_KEY_FILE
    try:
        fd = os.open(legacy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_master_key() + "\n")
    ring = read_file_ring(data_dir)
    assert ring is not None
    return ring


@contextmanager
def _ring_lock(data_dir: Path) -> Iterator[None]:
    """Serialises changes of the ring file between operators' commands."""
    fd = os.open(data_dir / _LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --- the ring as the running service uses it --------------------------------------------------


class KeyRing(SecretBox):
    """A SecretBox whose keys follow the ring file of the data directory.

    Before each encryption the file is checked (one stat) so that new ciphertexts use the
    current key soon after a rotation; a ciphertext under an unknown key id triggers a reload.
    With keys from the environment (`path` None) the ring never changes.
    """

    def __init__(self, ring: Ring, path: Path | None = None) -> None:
        super().__init__(ring.keys, ring.current)
        self._box = ring.box()
        self._ids = frozenset(ring.keys)
        self._path = path
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def reload(self) -> None:
        """Read the ring file again (no-op for keys from the environment)."""
        if self._path is None:
            return
        self._seen = self._stamp()
        ring = read_file_ring(self._path.parent)
        if ring is not None:
            # Reference swaps only: a concurrent caller sees the old box or the new one.
            self._box = ring.box()
            self._ids = frozenset(ring.keys)

    @property
    def key_ids(self) -> frozenset[str]:
        return self._ids

    @property
    def current_key_id(self) -> str:
        return self._box.current_key_id

    def encrypt(self, plaintext: bytes, *, context: bytes) -> str:
        if self._path is not None and self._stamp() != self._seen:
            self.reload()
        return self._box.encrypt(plaintext, context=context)

    def derive_key(self, purpose: bytes) -> bytes:
        if self._path is not None and self._stamp() != self._seen:
            self.reload()
        return self._box.derive_key(purpose)

    def decrypt(self, token: str, *, context: bytes) -> bytes:
        if self._path is not None and _key_id_or_none(token) not in self._ids:
            self.reload()
        return self._box.decrypt(token, context=context)


def _key_id_or_none(token: str) -> str | None:
    try:
        return SecretBox.key_id_of(token)
    except ValueError:
        return None


def open_ring(settings: Settings) -> KeyRing:
    """The ring of a server or worker process: from settings, else the data directory."""
    ring = env_ring(settings)
    if ring is not None:
        return KeyRing(ring)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return KeyRing(ensure_file_ring(settings.data_dir), settings.data_dir / RING_FILE)


# --- rotation ---------------------------------------------------------------------------------


def _next_key_id(keys: dict[str, str]) -> str:
    numbers = [int(m.group(1)) for k in keys if (m := re.fullmatch(r"k(\d+)", k))]
    return f"k{max(numbers, default=0) + 1}"


def add_current_key(settings: Settings) -> str:
    """Make a new key current in the data directory's ring; returns its id."""
    if env_ring(settings) is not None:
        raise KeyRingError(
            "the master keys come from the environment (CERTBROKER_MASTER_KEY[S]); add the new "
            "key to CERTBROKER_MASTER_KEYS, point CERTBROKER_MASTER_KEY_ID at it, restart, then "
            "run `certbroker keys reencrypt`"
        )
    with _ring_lock(settings.data_dir):
        ring = ensure_file_ring(settings.data_dir)
        key_id = _next_key_id(ring.keys)
        keys = {**ring.keys, key_id: generate_master_key()}
        write_file_ring(settings.data_dir, Ring(keys, key_id))
    return key_id


@dataclass(frozen=True)
class EncryptedColumn:
    """A column holding SecretBox ciphertexts, and how to rebuild each row's context."""

    name: str  # "table.column"
    pk: InstrumentedAttribute[int]
    column: InstrumentedAttribute[Any]  # str or str | None
    rows: Callable[[], Select[Any, Any, Any]]  # selects (pk, ciphertext, context value)
    context: Callable[[Any], bytes]


# Every column written with `ctx.box.encrypt`; the context must be the one its writer uses.
ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn(  # orders/placing.py
        "orders.key_encrypted",
        Order.id,
        Order.key_encrypted,
        lambda: select(Order.id, Order.key_encrypted, Order.cert_id),
        lambda cert_id: str(cert_id).encode("ascii"),
    ),
    EncryptedColumn(  # orders/issuing.py
        "certificates.bundles_encrypted",
        Certificate.id,
        Certificate.bundles_encrypted,
        lambda: select(Certificate.id, Certificate.bundles_encrypted, Order.cert_id).join(
            Order, Order.id == Certificate.order_id
        ),
        lambda cert_id: f"bundle:{cert_id}".encode("ascii"),
    ),
    EncryptedColumn(  # orders/email_dcv.py
        "mail_outbox.body_encrypted",
        OutgoingMail.id,
        OutgoingMail.body_encrypted,
        lambda: select(OutgoingMail.id, OutgoingMail.body_encrypted, OutgoingMail.id),
        lambda mail_id: f"mail:{mail_id}".encode("ascii"),
    ),
    EncryptedColumn(  # orders/upstream_accounts.py
        "upstream_accounts.key_encrypted",
        UpstreamAccount.id,
        UpstreamAccount.key_encrypted,
        lambda: select(UpstreamAccount.id, UpstreamAccount.key_encrypted, UpstreamAccount.id),
        lambda account_id: f"upstream-account:{account_id}".encode("ascii"),
    ),
    EncryptedColumn(  # orders/webhook_settings.py, notify/webhooks.secret_context
        "webhook_endpoints.secret_encrypted",
        WebhookEndpoint.id,
        WebhookEndpoint.secret_encrypted,
        lambda: select(
            WebhookEndpoint.id, WebhookEndpoint.secret_encrypted, WebhookEndpoint.account_id
        ),
        lambda account_id: f"webhook:{account_id}".encode("ascii"),
    ),
)


def _not_under(column: InstrumentedAttribute[Any], key_id: str) -> ColumnElement[bool]:
    return column.is_not(None) & ~column.startswith(f"{_TOKEN_PREFIX}{key_id}:", autoescape=True)


@dataclass
class ReencryptReport:
    rewritten: dict[str, int]
    batches: int

    @property
    def total(self) -> int:
        return sum(self.rewritten.values())


def reencrypt(
    db: Database,
    box: SecretBox,
    *,
    batch_size: int = 100,
    on_batch: Callable[[str, int], None] | None = None,
) -> ReencryptReport:
    """Rewrite every ciphertext not under the current key, `batch_size` rows per transaction.

    Safe while servers run: each batch locks its rows (PostgreSQL `FOR UPDATE`; SQLite takes
    the write lock at BEGIN), and a row is only rewritten if it still holds what was read.
    Passes repeat until one finds nothing left, which also catches ciphertexts written under
    the old key by a server that had not yet seen the new ring.
    """
    report = ReencryptReport({c.name: 0 for c in ENCRYPTED_COLUMNS}, 0)
    for _attempt in range(10):
        found = 0
        for spec in ENCRYPTED_COLUMNS:
            last_id = 0
            while True:
                with db.transaction() as session:
                    query = (
                        spec.rows()
                        .where(spec.pk > last_id, _not_under(spec.column, box.current_key_id))
                        .order_by(spec.pk)
                        .limit(batch_size)
                    )
                    if not db.is_sqlite:
                        query = query.with_for_update(of=spec.pk.class_)
                    rows = session.execute(query).all()
                    for pk, token, context_value in rows:
                        context = spec.context(context_value)
                        try:
                            plain = box.decrypt(token, context=context)
                        except SecretBoxError as exc:
                            raise KeyRingError(f"{spec.name} of row {pk}: {exc}") from None
                        fresh = box.encrypt(plain, context=context)
                        session.execute(
                            update(spec.pk.class_)
                            .where(spec.pk == pk, spec.column == token)
                            .values({spec.column.key: fresh})
                        )
                if not rows:
                    break
                last_id = rows[-1][0]
                found += len(rows)
                report.rewritten[spec.name] += len(rows)
                report.batches += 1
                if on_batch is not None:
                    on_batch(spec.name, len(rows))
        if found == 0:
            break
    return report


def usage(db: Database) -> dict[str, int]:
    """How many ciphertexts each master key id protects (no key material involved)."""
    counts: dict[str, int] = {}
    with db.transaction() as session:
        for spec in ENCRYPTED_COLUMNS:
            for (token,) in session.execute(select(spec.column).where(spec.column.is_not(None))):
                key_id = _key_id_or_none(token or "") or "(unreadable)"
                counts[key_id] = counts.get(key_id, 0) + 1
    return counts


def retire_key(settings: Settings, db: Database, key_id: str) -> None:
    """Remove a key from the data directory's ring once no ciphertext uses it."""
    if env_ring(settings) is not None:
        raise KeyRingError(
            "the master keys come from the environment: remove the key from "
            "CERTBROKER_MASTER_KEYS (after `certbroker keys list` shows it unused)"
        )
    with _ring_lock(settings.data_dir):
        ring = read_file_ring(settings.data_dir)
        if ring is None or key_id not in ring.keys:
            raise KeyRingError(f"no master key {key_id!r} in the ring")
        if key_id == ring.current:
            raise KeyRingError(f"master key {key_id!r} is current; rotate first")
        in_use = usage(db).get(key_id, 0)
        if in_use:
            raise KeyRingError(
                f"master key {key_id!r} still protects {in_use} values; run "
                "`certbroker keys reencrypt` first"
            )
        keys = {k: v for k, v in ring.keys.items() if k != key_id}
        write_file_ring(settings.data_dir, Ring(keys, ring.current))
        legacy = settings.data_dir / LEGACY_KEY_FILE
        if key_id == LEGACY_KEY_ID and legacy.exists():
            legacy.unlink()  # the first-start copy of k1: retired keys leave the disk
