"""Issue 7: the master-key ring, `certbroker keys rotate` while the service runs, keys from the
environment, and passphrase-protected CA keys."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import String, Text, select
from typer.testing import CliRunner

from certbroker import bootstrap, keyring
from certbroker.cli import app as cli_app
from certbroker.issuance.hierarchy import create_hierarchy, load_issuer
from certbroker.pki.secretbox import SecretBox, generate_master_key
from certbroker.settings import Settings
from certbroker.store.models import Base
from tests.conftest import Service

PARAMS = {
    "server": "other",
    "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
}
CIPHERTEXT = re.compile(r"v1:([A-Za-z0-9_.-]{1,64}):")
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def cli_env(service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The admin CLI on the service's data directory and database."""
    monkeypatch.setenv("CERTBROKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CERTBROKER_DATABASE_URL", service.ctx.db.url)
    for name in ("MASTER_KEY", "MASTER_KEYS", "MASTER_KEY_ID"):
        monkeypatch.delenv(f"CERTBROKER_{name}", raising=False)
    return tmp_path / "data"


def ciphertexts(service: Service) -> dict[str, list[str]]:
    """Every SecretBox ciphertext in the database, by table.column (found by its format)."""
    found: dict[str, list[str]] = {}
    with service.ctx.db.transaction() as session:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if not isinstance(column.type, String | Text):
                    continue
                for (value,) in session.execute(select(column).where(column.is_not(None))):
                    if isinstance(value, str) and CIPHERTEXT.match(value):
                        found.setdefault(f"{table.name}.{column.name}", []).append(value)
    return found


def key_ids(service: Service) -> set[str]:
    return {
        m.group(1)
        for values in ciphertexts(service).values()
        for v in values
        if (m := CIPHERTEXT.match(v))
    }


def issued_with_key(service: Service) -> tuple[str, dict[str, Any]]:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=1, params=PARAMS)["data"]
    service.publish(placed)
    service.work()
    collected = service.call("collect", certId=placed["certId"])
    assert collected["status"] == "COMPLETE" and "PRIVATE KEY" in collected["data"]["privateKey"]
    return placed["certId"], collected["data"]


def test_rotation_reencrypts_everything_while_the_service_runs(
    service: Service, cli_env: Path
) -> None:
    cert_id, before = issued_with_key(service)
    assert key_ids(service) == {"k1"}
    output = cli("keys", "rotate", "--batch-size", "1")
    assert "master key k2 is now current" in output
    assert re.search(r"(\d+) values now under master key k2 \(\1 batches\)", output)
    assert key_ids(service) == {"k2"}
    # The running service only knew k1: it reloads the ring on meeting k2.
    after = service.call("collect", certId=cert_id)["data"]
    for field in ("privateKey", "pkcs12", "pkcsPass", "jks", "jksPass"):
        assert after[field] == before[field]
    # ... and encrypts new secrets with the new current key.
    service.call("place", productCode="comodo-ssl", years=1, params=PARAMS)
    assert key_ids(service) == {"k2"}
    listing = cli("keys", "list")
    assert re.search(r"k1\s.*\s0\s", listing) and re.search(r"k2\s.*yes\s.*\s[1-9]", listing)
    assert "current; rotate first" in cli("keys", "retire", "k2", code=1)
    assert "no master key 'k9'" in cli("keys", "retire", "k9", code=1)
    cli("keys", "retire", "k1")
    assert not (cli_env / "master.key").exists()
    ring_file = cli_env / keyring.RING_FILE
    assert stat.S_IMODE(ring_file.stat().st_mode) == 0o600
    assert set(json.loads(ring_file.read_text())["keys"]) == {"k2"}
    assert service.call("collect", certId=cert_id)["data"]["privateKey"] == before["privateKey"]


def test_retire_refuses_a_key_still_in_use(service: Service, cli_env: Path) -> None:
    issued_with_key(service)
    keyring.add_current_key(Settings())  # a new current key, nothing re-encrypted yet
    output = cli("keys", "retire", "k1", code=1)
    assert "still protects" in output and "keys reencrypt" in output
    assert (cli_env / "master.key").exists()


def test_every_ciphertext_column_is_known_to_rotation(service: Service) -> None:
    issued_with_key(service)
    found = set(ciphertexts(service))
    assert {"orders.key_encrypted", "certificates.bundles_encrypted"} <= found
    assert found <= {spec.name for spec in keyring.ENCRYPTED_COLUMNS}


def test_a_running_ring_picks_up_a_rotation_before_encrypting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    ring = keyring.open_ring(settings)
    old = ring.encrypt(b"secret", context=b"c")
    assert SecretBox.key_id_of(old) == "k1"
    assert keyring.add_current_key(settings) == "k2"
    fresh = ring.encrypt(b"secret", context=b"c")
    assert SecretBox.key_id_of(fresh) == "k2"
    assert ring.decrypt(old, context=b"c") == ring.decrypt(fresh, context=b"c") == b"secret"


def test_keys_from_the_environment(
    service: Service, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued_with_key(service)
    file_key = (cli_env / "master.key").read_text().strip()
    new_key = generate_master_key()
    monkeypatch.setenv("CERTBROKER_MASTER_KEYS", json.dumps({"k1": file_key, "k2": new_key}))
    monkeypatch.setenv("CERTBROKER_MASTER_KEY_ID", "k2")
    refused = cli("keys", "rotate", code=1)
    assert "CERTBROKER_MASTER_KEYS" in refused and "keys reencrypt" in refused
    assert "values now under master key k2" in cli("keys", "reencrypt")
    assert key_ids(service) == {"k2"}
    env_ring = keyring.open_ring(Settings())
    assert env_ring.current_key_id == "k2" and env_ring.key_ids == {"k1", "k2"}
    assert not (cli_env / keyring.RING_FILE).exists()  # the data directory's ring is untouched

    monkeypatch.delenv("CERTBROKER_MASTER_KEY_ID")
    monkeypatch.delenv("CERTBROKER_MASTER_KEYS")
    secret = SecretStr(new_key)
    single = keyring.env_ring(Settings(master_key=secret, master_key_id="k2"))
    assert single == keyring.Ring({"k2": new_key}, "k2")
    two = json.dumps({"a": new_key, "b": new_key})
    broken = [
        (Settings(master_keys=SecretStr("{not json")), "not valid JSON"),
        (Settings(master_keys=SecretStr("[1]")), "JSON object"),
        (Settings(master_keys=SecretStr(two)), "must name the current"),
        (Settings(master_keys=SecretStr(two), master_key=secret), "not both"),
        (Settings(master_keys=SecretStr(json.dumps({"a": new_key[:-4]}))), "decodes to"),
    ]
    for settings, message in broken:
        with pytest.raises(keyring.KeyRingError, match=message) as error:
            keyring.env_ring(settings)
        assert new_key[:20] not in str(error.value)


def test_ca_keys_with_a_passphrase(tmp_path: Path) -> None:
    url = "http://certbroker.example.com"
    ca_dir = tmp_path / "ca"
    create_hierarchy(ca_dir, public_url=url, now=NOW, passphrase=b"correct horse")
    for key_file in ca_dir.glob("*.key"):
        assert key_file.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_issuer(ca_dir, "production", url, b"correct horse").name == "production"
    with pytest.raises(ValueError, match="is encrypted; set CERTBROKER_CA_KEY_PASSPHRASE"):
        load_issuer(ca_dir, "production", url)
    with pytest.raises(ValueError, match="could not be decrypted") as error:
        load_issuer(ca_dir, "sandbox", url, b"wrong battery")
    assert "wrong battery" not in str(error.value)
    plain = tmp_path / "plain"
    create_hierarchy(plain, public_url=url, now=NOW)
    with pytest.raises(ValueError, match="not encrypted but CERTBROKER_CA_KEY_PASSPHRASE"):
        load_issuer(plain, "production", url, b"correct horse")


def test_the_passphrase_setting_reaches_the_ca(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", ca_key_passphrase=SecretStr("s3cret phrase"))
    ctx = bootstrap.build_context(settings)
    assert ctx.ca.issuer(sandbox=False).name == "production"
    key_text = (settings.ca_dir / "intermediate.key").read_text()
    assert "ENCRYPTED PRIVATE KEY" in key_text
    ctx.db.dispose()
    with pytest.raises(ValueError, match="is encrypted"):
        bootstrap.build_context(Settings(data_dir=tmp_path / "data"))
