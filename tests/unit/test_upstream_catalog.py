"""Upstreams as settings, the catalog's `issuer` field, CATALOG merging and the capability check."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from certbroker.bootstrap import load_catalog
from certbroker.catalog.catalog import Catalog, CatalogError
from certbroker.settings import Settings, UpstreamSettings


def _acme_product(code: str = "acme-dv", **changes: Any) -> dict[str, Any]:
    shipped = json.loads(
        (Path(__file__).parents[2] / "src/certbroker/catalog/products.json").read_text()
    )
    base: dict[str, Any] = copy.deepcopy(
        next(p for p in shipped["products"] if p["code"] == "comodo-ssl")
    )
    base.update(
        code=code,
        dcvMethods=["HTTP_CSR_HASH", "HTTPS_CSR_HASH"],
        issuer={"type": "acme", "upstream": "pebble"},
    )
    base.update(changes)
    return base


def _write(tmp_path: Path, products: list[dict[str, Any]], **extra: Any) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "USD", "products": products, **extra}))
    return path


def _settings(tmp_path: Path, catalog: Path, **capabilities: Any) -> Settings:
    upstream = UpstreamSettings.model_validate(
        {"directory": "https://127.0.0.1:14000/dir", "capabilities": capabilities}
    )
    return Settings(data_dir=tmp_path, catalog=catalog, upstreams={"pebble": upstream})


def test_same_code_replaces_new_code_adds(tmp_path: Path) -> None:
    cheaper = _acme_product("comodo-ssl")
    path = _write(tmp_path, [cheaper, _acme_product("acme-dv")])
    catalog = load_catalog(_settings(tmp_path, path))
    shipped = Catalog.load_default()
    assert catalog.require("comodo-ssl").issuer.upstream == "pebble"
    assert catalog.require("acme-dv").issuer.is_acme
    assert len(catalog.products()) == len(shipped.products()) + 1
    assert not shipped.require("comodo-ssl").issuer.is_acme  # the shipped one is untouched


def test_replace_true_drops_the_shipped_products(tmp_path: Path) -> None:
    path = _write(tmp_path, [_acme_product()], replace=True)
    assert [p.code for p in load_catalog(_settings(tmp_path, path)).products()] == ["acme-dv"]


@pytest.mark.parametrize(
    ("product", "capabilities", "message"),
    [
        (_acme_product(issuer={"type": "acme", "upstream": "nope"}), {}, "unknown upstream 'nope'"),
        (
            _acme_product(maxDomain=5, supportSan="Y", defaultProtectDomain=5),
            {"max_identifiers": 2},
            "maxDomain 5 > upstream 'pebble' max_identifiers 2",
        ),
        (_acme_product(supportIp="Y"), {"ip": False}, "does not certify IP addresses"),
        (
            _acme_product(issuer={"type": "acme", "upstream": "pebble", "keyTypes": ["ec384"]}),
            {"ec": ["P-256"]},
            "keyTypes ec384 are not certified",
        ),
    ],
)
def test_a_product_promising_more_than_its_upstream_stops_loading(
    tmp_path: Path, product: dict[str, Any], capabilities: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, [product])
    with pytest.raises(CatalogError) as caught:
        load_catalog(_settings(tmp_path, path, **capabilities))
    assert "product 'acme-dv'" in str(caught.value)
    assert message in str(caught.value)


def test_a_wildcard_product_needs_dns01_upstream(tmp_path: Path) -> None:
    product = _acme_product(supportWildcard="Y", dcvMethods=["HTTP_CSR_HASH"])
    product["price"]["sanPrice"]["wildPrice"] = {}
    path = _write(tmp_path, [product])
    with pytest.raises(CatalogError, match="supportWildcard Y but upstream 'pebble' has no dns-01"):
        load_catalog(_settings(tmp_path, path))


def test_acme_products_offer_file_methods_only(tmp_path: Path) -> None:
    path = _write(tmp_path, [_acme_product(dcvMethods=["HTTP_CSR_HASH", "EMAIL"])])
    with pytest.raises(CatalogError, match=r"product 'acme-dv'.*remove EMAIL"):
        load_catalog(_settings(tmp_path, path))


def test_eab_key_from_environment_not_from_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "certbroker.toml"
    toml.write_text(
        '[upstreams.pebble]\ndirectory = "https://127.0.0.1:14000/dir"\neab_kid = "kid-1"\n'
        "capabilities = { max_identifiers = 10, ip = true, rsa = [2048] }\n"
    )
    monkeypatch.setenv("CERTBROKER_CONFIG", str(toml))
    monkeypatch.setenv("CERTBROKER_UPSTREAMS__PEBBLE__EAB_HMAC_KEY", "c2VjcmV0")
    upstream = Settings().upstreams["pebble"]
    assert (upstream.eab_kid, upstream.hmac_key()) == ("kid-1", "c2VjcmV0")
    assert upstream.capabilities.rsa == [2048] and upstream.capabilities.ip

    toml.write_text(toml.read_text() + 'eab_hmac_key = "c2VjcmV0"\n')
    with pytest.raises(ValueError, match="must not be in the TOML file"):
        Settings()


def test_eab_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "eab.key"
    key_file.write_text("c2VjcmV0\n")
    upstream = UpstreamSettings(directory="https://x.example/dir", eab_hmac_key_file=key_file)
    assert upstream.hmac_key() == "c2VjcmV0"
