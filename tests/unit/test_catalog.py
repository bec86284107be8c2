"""Product catalogue: shipped data, wire form, pricing, load-time validation, country codes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certbroker.catalog.catalog import (
    Catalog,
    CatalogError,
    NotSoldError,
    Product,
    billable_names,
)
from certbroker.catalog.countries import COUNTRY_CODES, is_country_code

SPEC_36_KEYS = {
    "code",
    "productName",
    "supportWildcard",
    "supportStandard",
    "supportIp",
    "supportSan",
    "validationType",
    "maxDomain",
    "maxYear",
    "defaultProtectDomain",
    "price",
}
TERM_KEYS = {"price012", "price024", "price036", "price048", "price060", "price072"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load_default()


# --- shipped data ----------------------------------------------------------------------------


def test_load_default_is_cached(catalog: Catalog) -> None:
    assert Catalog.load_default() is catalog


def test_vendors_use_spec_spelling(catalog: Catalog) -> None:
    assert catalog.vendors() == ("Sectigo", "sslTrus", "Certum", "Thawte", "Digicert")
    assert catalog.products("DigiCert") == []  # SPEC 4.4: wrong case is "vendor invalid"
    assert {p.vendor for p in catalog.products("Digicert")} == {"Digicert"}


def test_products_in_file_order_and_filtered(catalog: Catalog) -> None:
    sectigo = catalog.products("Sectigo")
    assert sectigo[0].code == "comodo-ssl"
    assert all(p.vendor == "Sectigo" for p in sectigo)
    assert len(catalog.products()) == sum(len(catalog.products(v)) for v in catalog.vendors())


@pytest.mark.parametrize(
    "code",
    [
        "comodo-ssl",
        "comodo-wildcard-ssl-certificate",
        "sectigo-multi-domain",
        "comodo-positive-multi-domain-wildcard",
        "sectigo-ov",
        "sectigo-ov-wildcard",
        "sectigo-ov-multi-san",
        "comodo-ev-ssl-certificate",
        "comodo-ev-multi-domain-ssl",
        "sectigo-free-trial",
        "sectigo-multi-free-trial",
        "ssltrus-dv-ssl",
        "ssltrus-wildcard-dv",
        "ssltrus-multi-domain-dv",
        "ssltrus-ov-ssl",
        "ssltrus-ev-ssl",
        "ssltrus-free-trial",
        "certum-dv-ssl",
        "thawte-ov-flex",
        "digicert-secure-site-ev-flex",
        "rapidssl",
    ],
)
def test_required_codes_present(catalog: Catalog, code: str) -> None:
    assert catalog.get(code) is not None


def test_catalog_covers_every_kind(catalog: Catalog) -> None:
    products = catalog.products()
    assert {p.validation_type for p in products} == {"dv", "ov", "ev"}
    assert any(
        not p.support_san and p.support_standard and not p.support_wildcard for p in products
    )  # single name
    assert any(p.support_wildcard and not p.support_standard for p in products)  # wildcard-only
    assert any(p.support_san and not p.support_wildcard for p in products)  # multi-domain
    assert any(
        p.support_san and p.support_wildcard and p.support_standard for p in products
    )  # multi-domain wildcard
    assert [p.code for p in products if p.support_ip] == ["ssltrus-multi-domain-dv"]
    assert {p.code for p in products if p.is_trial} >= {
        "sectigo-free-trial",
        "sectigo-multi-free-trial",
        "ssltrus-free-trial",
    }


def test_multi_domain_limits(catalog: Catalog) -> None:
    for p in catalog.products():
        if p.support_san and not p.is_trial and p.vendor in ("Sectigo", "sslTrus", "Certum"):
            assert p.max_domain in (100, 250), p.code
            assert p.default_protect_domain == 3, p.code
        if not p.support_san:
            assert (p.max_domain, p.default_protect_domain) == (1, 1), p.code


def test_trials(catalog: Catalog) -> None:
    for p in catalog.products():
        if p.is_trial:
            assert p.trial_days == 30
            assert p.max_year == 1
            assert p.to_wire()["price"] == {
                "basePrice": {"price012": "0.00"},
                "sanPrice": {"normalPrice": {}, "wildPrice": {}},
            }
            assert "EMAIL" not in p.dcv_methods
        else:
            assert p.trial_days is None


def test_vendor_specific_dcv_methods(catalog: Catalog) -> None:
    for p in catalog.products("Certum"):  # SPEC Appendix C: Certum has no HTTPS file method
        assert "HTTPS_CSR_HASH" not in p.dcv_methods
    assert "EMAIL" not in catalog.require("ssltrus-dv-ssl-domroot").dcv_methods
    assert catalog.require("comodo-ssl").dcv_methods == (
        "HTTP_CSR_HASH",
        "HTTPS_CSR_HASH",
        "CNAME_CSR_HASH",
        "EMAIL",
    )


def test_ev_never_wildcard_or_ip(catalog: Catalog) -> None:
    ev = [p for p in catalog.products() if p.validation_type == "ev"]
    assert len(ev) >= 4
    assert not any(p.support_wildcard or p.support_ip for p in ev)


def test_to_wire_is_exact_spec_object(catalog: Catalog) -> None:
    for p in catalog.products():
        wire = p.to_wire()
        assert set(wire) == SPEC_36_KEYS | {"vendor"}, p.code  # vendor: clients read it
        for key in ("supportWildcard", "supportStandard", "supportIp", "supportSan"):
            assert wire[key] in ("Y", "N")
        price = wire["price"]
        assert isinstance(price, dict)
        assert set(price) == {"basePrice", "sanPrice"}
        assert set(price["basePrice"]) <= TERM_KEYS
        assert set(price["sanPrice"]) == {"normalPrice", "wildPrice"}
        json.dumps(wire)  # serialisable as is


def test_to_wire_example(catalog: Catalog) -> None:
    assert catalog.require("sectigo-multi-domain").to_wire() == {
        "code": "sectigo-multi-domain",
        "productName": "Sectigo DV Multi-Domain SSL",
        "vendor": "Sectigo",
        "supportWildcard": "N",
        "supportStandard": "Y",
        "supportIp": "N",
        "supportSan": "Y",
        "validationType": "dv",
        "maxDomain": 250,
        "maxYear": 5,
        "defaultProtectDomain": 3,
        "price": {
            "basePrice": {
                "price012": "30.00",
                "price024": "57.00",
                "price036": "81.00",
                "price048": "105.00",
                "price060": "126.00",
            },
            "sanPrice": {
                "normalPrice": {
                    "price012": "10.00",
                    "price024": "19.00",
                    "price036": "27.00",
                    "price048": "35.00",
                    "price060": "42.00",
                },
                "wildPrice": {},
            },
        },
    }


def test_to_wire_omits_unsold_terms(catalog: Catalog) -> None:
    wire = catalog.require("comodo-ev-ssl-certificate").to_wire()
    assert wire["maxYear"] == 3
    assert wire["price"] == {
        "basePrice": {"price012": "99.00", "price024": "188.10", "price036": "267.30"},
        "sanPrice": {"normalPrice": {}, "wildPrice": {}},
    }


def test_years_sold(catalog: Catalog) -> None:
    assert catalog.require("comodo-ssl").years_sold() == (1, 2, 3, 4, 5)
    assert catalog.require("certum-ev-ssl").years_sold() == (1, 2)
    assert catalog.require("sectigo-free-trial").years_sold() == (1,)


def test_get_and_require_unknown(catalog: Catalog) -> None:
    assert catalog.get("no-such-product") is None
    with pytest.raises(NotSoldError) as info:
        catalog.require("no-such-product")
    assert str(info.value) == (
        "productCode ‘no-such-product’ is unknown; call productList for the codes on sale"
    )


def test_product_is_hashable(catalog: Catalog) -> None:
    p = catalog.require("comodo-ssl")
    assert {p: 1}[p] == 1


# --- pricing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "years", "names", "cents"),
    [
        ("comodo-ssl", 1, ["example.com"], 1200),
        ("comodo-ssl", 2, ["example.com"], 2280),
        ("sectigo-free-trial", 1, ["example.com"], 0),
        # the bare base domain of a wildcard is free
        ("comodo-wildcard-ssl-certificate", 1, ["*.example.com", "example.com"], 8500),
        ("comodo-wildcard-ssl-certificate", 1, ["*.Example.COM", " EXAMPLE.com "], 8500),
        # defaultProtectDomain 3 included, 2 extra normal names
        ("sectigo-multi-domain", 1, ["a.com", "b.com", "c.com", "d.com", "e.com"], 3000 + 2 * 1000),
        ("sectigo-multi-domain", 3, ["a.com", "b.com", "c.com", "d.com"], 8100 + 2700),
        ("sectigo-multi-domain", 1, ["a.com"], 3000),  # fewer names than included: base price
        # wildcard names take the included slots first: 4 wild + 2 normal (base a.com free)
        (
            "comodo-positive-multi-domain-wildcard",
            2,
            ["*.a.com", "a.com", "b.com", "c.com", "*.d.com", "*.e.com", "*.f.com"],
            22800 + 11400 + 2 * 1900,
        ),
        (
            "comodo-positive-multi-domain-wildcard",
            1,
            ["b.com", "*.a.com", "c.com", "d.com"],
            12000 + 1000,
        ),
        ("ssltrus-multi-domain-dv", 1, ["a.com", "b.com", "192.0.2.1", "2001:db8::1"], 2000 + 600),
    ],
)
def test_price_cents(catalog: Catalog, code: str, years: int, names: list[str], cents: int) -> None:
    assert catalog.price_cents(catalog.require(code), years, names) == cents


def test_price_unsupported_term(catalog: Catalog) -> None:
    with pytest.raises(NotSoldError) as info:
        catalog.price_cents(catalog.require("certum-ev-ssl"), 3, ["example.com"])
    assert str(info.value) == "product certum-ev-ssl is not sold for 3 years; terms sold: 1, 2"


def test_price_trial_only_one_year(catalog: Catalog) -> None:
    with pytest.raises(NotSoldError) as info:
        catalog.price_cents(catalog.require("sectigo-free-trial"), 2, ["example.com"])
    assert str(info.value) == "product sectigo-free-trial is not sold for 2 years; terms sold: 1"


def test_price_extra_kind_not_sold(catalog: Catalog) -> None:
    product = catalog.require("sectigo-multi-free-trial")
    with pytest.raises(NotSoldError) as info:
        catalog.price_cents(product, 1, ["a.com", "b.com", "c.com", "d.com"])
    assert str(info.value) == (
        "product sectigo-multi-free-trial sells no additional names for 1 years (it includes 3)"
    )


def test_billable_names() -> None:
    assert billable_names(["*.a.com", "A.com", "www.a.com", "b.com"]) == [
        "*.a.com",
        "www.a.com",
        "b.com",
    ]
    assert billable_names(["a.com", "b.com"]) == ["a.com", "b.com"]
    assert billable_names(["*.a.com", "*.b.a.com", "b.a.com"]) == ["*.a.com", "*.b.a.com"]


# --- load-time validation --------------------------------------------------------------------


def _entry(**overrides: object) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "code": "test-multi",
        "productName": "Test Multi",
        "vendor": "Sectigo",
        "validationType": "dv",
        "supportWildcard": "N",
        "supportStandard": "Y",
        "supportIp": "N",
        "supportSan": "Y",
        "maxDomain": 100,
        "maxYear": 2,
        "defaultProtectDomain": 3,
        "price": {
            "basePrice": {"price012": "10.00", "price024": "19.00"},
            "sanPrice": {"normalPrice": {"price012": "2.00", "price024": "3.80"}, "wildPrice": {}},
        },
        "trialDays": None,
        "dcvMethods": ["HTTP_CSR_HASH", "CNAME_CSR_HASH", "EMAIL"],
    }
    entry.update(overrides)
    return entry


def _catalog(*entries: dict[str, Any]) -> Catalog:
    return Catalog.from_data({"currency": "USD", "products": list(entries)}, source="t.json")


def test_valid_entry_loads() -> None:
    product = _catalog(_entry()).require("test-multi")
    assert isinstance(product, Product)
    assert product.base_price == {1: 1000, 2: 1900}
    assert product.san_normal_price == {1: 200, 2: 380}
    assert product.dcv_methods == ("HTTP_CSR_HASH", "CNAME_CSR_HASH", "EMAIL")


def test_decimal_prices_are_exact() -> None:
    # float("0.29") * 100 == 28.999999999999996; Decimal keeps it 29
    entry = _entry(
        price={
            "basePrice": {"price012": "0.29", "price024": "1.15"},
            "sanPrice": {"normalPrice": {"price012": "0.29", "price024": "0.57"}, "wildPrice": {}},
        }
    )
    cat = _catalog(entry)
    product = cat.require("test-multi")
    assert cat.price_cents(product, 1, ["a.com", "b.com", "c.com", "d.com"]) == 58
    assert product.to_wire()["price"] == entry["price"]


def _price(
    base: dict[str, str], normal: dict[str, str] | None = None, wild: dict[str, str] | None = None
) -> dict[str, Any]:
    return {"basePrice": base, "sanPrice": {"normalPrice": normal or {}, "wildPrice": wild or {}}}


def _without(key: str) -> dict[str, Any]:
    entry = _entry()
    del entry[key]
    return entry


BROKEN: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    ("missing key", lambda: _without("dcvMethods"), "keys wrong (missing: dcvMethods; unknown: -)"),
    ("unknown key", lambda: _entry(colour="red"), "keys wrong (missing: -; unknown: colour)"),
    (
        "vendor case",
        lambda: _entry(vendor="DigiCert"),
        "vendor 'DigiCert' is not one of Sectigo, sslTrus, Certum, Thawte, Digicert",
    ),
    (
        "validation type",
        lambda: _entry(validationType="EV"),
        "validationType must be dv, ov or ev, got 'EV'",
    ),
    ("flag", lambda: _entry(supportIp=True), 'supportIp must be "Y" or "N", got True'),
    ("maxYear range", lambda: _entry(maxYear=6), "maxYear must be an integer 1-5, got 6"),
    (
        "maxDomain type",
        lambda: _entry(maxDomain="100"),
        "maxDomain must be an integer 1-1000, got '100'",
    ),
    (
        "included > max",
        lambda: _entry(defaultProtectDomain=101),
        "defaultProtectDomain must be an integer 1-100, got 101",
    ),
    (
        "float price",
        lambda: _entry(
            price=_price(
                {"price012": 10.0, "price024": "19.00"},  # type: ignore[dict-item]
                {"price012": "2.00", "price024": "3.80"},
            )
        ),
        'price.basePrice.price012 must be a decimal string like "12.00", got 10.0',
    ),
    (
        "price one decimal",
        lambda: _entry(
            price=_price(
                {"price012": "10.0", "price024": "19.00"}, {"price012": "2.00", "price024": "3.80"}
            )
        ),
        "price.basePrice.price012 must be a decimal string like \"12.00\", got '10.0'",
    ),
    (
        "term key",
        lambda: _entry(price=_price({"price012": "10.00", "price24": "19.00"})),
        "price.basePrice has unknown key 'price24' (use price012 ... price072)",
    ),
    (
        "maxYear vs terms",
        lambda: _entry(maxYear=1),
        "basePrice must sell 1 year and maxYear 1; it sells (1, 2)",
    ),
    (
        "san price for unsold term",
        lambda: _entry(
            price=_price(
                {"price012": "10.00", "price024": "19.00"},
                {"price012": "2.00", "price024": "3.80", "price036": "5.00"},
            )
        ),
        "sanPrice.normalPrice sells a term that basePrice does not",
    ),
    (
        "extra names unpriced",
        lambda: _entry(
            price=_price({"price012": "10.00", "price024": "19.00"}, {"price012": "2.00"})
        ),
        "maxDomain 100 > defaultProtectDomain 3 but sanPrice.normalPrice does not price every term "
        "sold",
    ),
    (
        "wild price without wildcard",
        lambda: _entry(
            price=_price(
                {"price012": "10.00", "price024": "19.00"},
                {"price012": "2.00", "price024": "3.80"},
                {"price012": "9.00"},
            )
        ),
        "a product without wildcard support cannot sell sanPrice.wildPrice",
    ),
    (
        "single name with SAN slots",
        lambda: _entry(supportSan="N"),
        "supportSan N requires maxDomain 1",
    ),
    (
        "ev wildcard",
        lambda: _entry(validationType="ev", supportWildcard="Y"),
        "EV products cannot allow wildcard or IP names (EV Guidelines 9.2.1, 9.8.1)",
    ),
    (
        "no name kind",
        lambda: _entry(supportStandard="N"),
        "supportWildcard and supportStandard cannot both be N",
    ),
    (
        "ip without file method",
        lambda: _entry(supportIp="Y", dcvMethods=["EMAIL"]),
        "an IP product needs HTTP_CSR_HASH or HTTPS_CSR_HASH (BR 3.2.2.5)",
    ),
    (
        "wildcard-only with file methods only",
        lambda: _entry(
            supportWildcard="Y",
            supportStandard="N",
            supportSan="N",
            maxDomain=1,
            defaultProtectDomain=1,
            price=_price({"price012": "9.00", "price024": "17.00"}),
            dcvMethods=["HTTP_CSR_HASH"],
        ),
        "a wildcard-only product needs a non-file DCV method (BR 3.2.2.4.18)",
    ),
    (
        "unknown dcv method",
        lambda: _entry(dcvMethods=["DNS_CSR_HASH"]),
        "dcvMethods must be a non-empty list of distinct values of ('HTTP_CSR_HASH', "
        "'HTTPS_CSR_HASH', 'CNAME_CSR_HASH', 'EMAIL')",
    ),
    (
        "trial with two terms",
        lambda: _entry(trialDays=30, maxDomain=3),
        'a trial sells only price012 "0.00" and no extra names',
    ),
    (
        "free non-trial",
        lambda: _entry(maxDomain=3, price=_price({"price012": "0.00", "price024": "19.00"})),
        "prices of a non-trial product must be above 0.00",
    ),
]


@pytest.mark.parametrize(
    ("make", "message"), [(m, msg) for _, m, msg in BROKEN], ids=[name for name, _, _ in BROKEN]
)
def test_broken_entry_fails_loudly_with_code(
    make: Callable[[], dict[str, Any]], message: str
) -> None:
    with pytest.raises(CatalogError) as info:
        _catalog(make())
    assert str(info.value) == f"t.json: product 'test-multi': {message}"


def test_valid_trial_entry_loads() -> None:
    trial = _entry(
        trialDays=30,
        maxYear=1,
        maxDomain=3,
        price=_price({"price012": "0.00"}),
        dcvMethods=["CNAME_CSR_HASH"],
    )
    assert _catalog(trial).require("test-multi").trial_days == 30


def test_duplicate_code() -> None:
    with pytest.raises(CatalogError) as info:
        _catalog(_entry(), _entry())
    assert str(info.value) == "t.json: product 'test-multi' is listed twice"


def test_bad_code_and_document_shape() -> None:
    with pytest.raises(CatalogError, match=r"products\[0\] has no valid 'code' \(got 'Bad Code'\)"):
        _catalog(_entry(code="Bad Code"))
    with pytest.raises(CatalogError, match="expected an object with a 'products' array"):
        Catalog.from_data([_entry()], source="t.json")
    with pytest.raises(CatalogError, match="currency must be 'USD'"):
        Catalog.from_data({"currency": "EUR", "products": []}, source="t.json")
    with pytest.raises(CatalogError, match=r"t\.json: not valid JSON"):
        Catalog.from_json("{", source="t.json")


def test_shipped_file_round_trips_through_validation() -> None:
    path = Path(__file__).parents[2] / "src/certbroker/catalog/products.json"
    data = json.loads(path.read_text("utf-8"))
    broken = copy.deepcopy(data)
    broken["products"][3]["maxYear"] = 4  # basePrice still sells 5 years
    code = broken["products"][3]["code"]
    assert len(Catalog.from_data(data).products()) == len(data["products"])
    with pytest.raises(CatalogError, match=f"product '{code}': basePrice must sell"):
        Catalog.from_data(broken)


# --- countries -------------------------------------------------------------------------------


def test_country_codes() -> None:
    assert len(COUNTRY_CODES) == 249
    for code in ("CN", "US", "VN", "BR", "GB", "AX", "SS", "BQ"):
        assert is_country_code(code)
    # reserved / user-assigned / wrong case
    for code in ("UK", "EU", "XK", "ZZ", "AN", "cn", "C", "CHN", ""):
        assert not is_country_code(code)


def test_country_codes_match_system_iso3166_table() -> None:
    table = Path("/usr/share/zoneinfo/iso3166.tab")
    if not table.exists():
        pytest.skip("tzdata iso3166.tab not installed")
    codes = {
        line.split("\t")[0]
        for line in table.read_text("utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert codes == COUNTRY_CODES
