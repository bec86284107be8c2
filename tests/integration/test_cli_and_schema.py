"""The admin CLI on the same database, and migrations that match the models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from typer.testing import CliRunner

from certbroker.cli import app
from certbroker.store.db import Database
from certbroker.store.models import Base


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CERTBROKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CERTBROKER_DATABASE_URL", raising=False)
    return tmp_path / "data"


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_accounts_topup_and_tokens(cli_env: Path) -> None:
    created = run("account", "create", "acme", "--sandbox")
    token = re.search(r"cb_\S+", created)
    assert token and "sandbox" in created
    assert token.group(0) not in (cli_env / "certbroker.db").read_bytes().decode("latin-1")
    assert "12.50" in run("account", "topup", "acme", "12.50")
    listing = run("account", "list")
    assert "acme" in listing and "12.50" in listing
    second = run("token", "create", "acme", "--label", "ci")
    token_id = re.search(r"token id (\d+)", second)
    assert token_id
    assert "revoked" in run("token", "revoke", token_id.group(1))


def test_cli_errors_are_readable(cli_env: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["account", "topup", "nobody", "5"])
    assert bad.exit_code == 1 and "no account 'nobody'" in bad.output
    run("account", "create", "acme")
    negative = runner.invoke(app, ["account", "topup", "acme", "--", "-5"])
    assert negative.exit_code == 1 and "positive" in negative.output
    fraction = runner.invoke(app, ["account", "topup", "acme", "1.005"])
    assert fraction.exit_code == 1 and "2 decimals" in fraction.output
    duplicate = runner.invoke(app, ["account", "create", "acme"])
    assert duplicate.exit_code == 1 and "exists already" in duplicate.output
    missing = runner.invoke(app, ["ov", "approve", "261201aaaaaaaaaa"])
    assert missing.exit_code == 1 and "no order" in missing.output


def test_migrations_match_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'schema.db'}")
    db.upgrade()
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    db.dispose()
