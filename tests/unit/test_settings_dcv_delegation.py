"""`[dcv_delegation]` from the TOML file and the environment; the TSIG secret never from TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from certbroker.settings import Settings


def test_section_and_environment_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "certbroker.toml"
    config.write_text(
        '[dcv_delegation]\nzone = "dcv.operator.example"\nnameservers = ["ns1.operator.example"]\n'
    )
    secret = tmp_path / "tsig.secret"
    secret.write_text("c2VjcmV0\n")
    monkeypatch.setenv("CERTBROKER_CONFIG", str(config))
    monkeypatch.setenv("CERTBROKER_DCV_DELEGATION__PUBLISHER", "rfc2136")
    monkeypatch.setenv("CERTBROKER_DCV_DELEGATION__RFC2136_TSIG_SECRET_FILE", str(secret))
    settings = Settings().dcv_delegation
    assert settings.zone == "dcv.operator.example" and settings.publisher == "rfc2136"
    assert settings.nameservers == ["ns1.operator.example"]
    assert settings.tsig_secret() == "c2VjcmV0"
    monkeypatch.setenv("CERTBROKER_DCV_DELEGATION__RFC2136_TSIG_SECRET", "ZW52")
    assert Settings().dcv_delegation.tsig_secret() == "ZW52"


def test_tsig_secret_in_the_toml_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "certbroker.toml"
    config.write_text('[dcv_delegation]\nrfc2136_tsig_secret = "c2VjcmV0"\n')
    monkeypatch.setenv("CERTBROKER_CONFIG", str(config))
    with pytest.raises(ValueError, match="does not belong in the TOML file"):
        Settings()
