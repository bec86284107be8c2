"""The product catalogue the built-in CA sells (SPEC 3.6, 4.4, Appendix F).

Data lives in `products.json` beside this module: `{"currency": "USD", "products": [...]}`, each
product the SPEC 3.6 object plus `vendor` (SPEC 4.4 spelling: Sectigo, sslTrus, Certum, Thawte,
Digicert), `trialDays` and `dcvMethods`. The file is checked when it is loaded, so a broken entry
stops start-up with its product code in the message instead of surfacing as a bad order later.

Policy decisions encoded here (one place, used by pricing and by the order limits in
`orders/params.py` through `billable_names`):

- Wildcard base domain is free. An order naming `*.example.com` may also name the bare
  `example.com`; the bare name takes no slot of `maxDomain` and is not priced, as Sectigo and
  DigiCert do. So the single wildcard product (maxDomain 1, supportSan N) accepts
  `*.example.com` + `example.com`, and a wildcard-only product (supportStandard N) accepts a plain
  name only when it is the base of a wildcard in the same order.
- Included names. `basePrice` covers `defaultProtectDomain` billable names. Wildcard names use the
  included slots first (the customer-favourable reading, independent of the order of names); every
  further name costs `sanPrice.wildPrice` (names starting `*.`) or `sanPrice.normalPrice` for that
  term. A missing price key means the term (or the extra name kind) is not sold.
- Trials (`trialDays` set) sell only the one-year term at "0.00"; the certificate is valid for
  `trialDays` days. They sell no extra names, so `maxDomain` = `defaultProtectDomain`.
- EV products never allow wildcard or IP names (EV Guidelines 9.2.1 / 9.8.1); IP products must
  offer an HTTP(S) file method because BR 3.2.2.5 has no DNS or constructed-e-mail method for IPs.
- Issuers. A product may carry `"issuer": {"type": "acme", "upstream": NAME, "keyTypes": [...]}`
  (absent: the built-in CA). `Catalog.check_upstreams` refuses, at start-up, a product whose
  upstream is unknown or cannot certify what the product promises. An ACME product offers the
  file methods (http-01, RFC 8555 8.3) and CNAME_CSR_HASH (dns-01, 8.4, through the persistent
  CNAME delegation); no EMAIL (ACME has none for TLS).
- Catalog files. `load(path)` reads the shipped products.json and then the operator's file: a
  product with a shipped code replaces it, a new code is added (in file order); with
  `"replace": true` the operator's file is the whole catalogue.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Literal, cast

from certbroker.pki.text import quoted

ValidationType = Literal["dv", "ov", "ev"]

VENDORS: tuple[str, ...] = ("Sectigo", "sslTrus", "Certum", "Thawte", "Digicert")
VALIDATION_TYPES: tuple[ValidationType, ...] = ("dv", "ov", "ev")
DCV_METHODS: tuple[str, ...] = ("HTTP_CSR_HASH", "HTTPS_CSR_HASH", "CNAME_CSR_HASH", "EMAIL")
FILE_DCV_METHODS: frozenset[str] = frozenset({"HTTP_CSR_HASH", "HTTPS_CSR_HASH"})
MAX_TERM_YEARS = 6  # price072 is the longest key the wire format has (SPEC 3.6)

_PRODUCT_KEYS = frozenset(
    {
        "code",
        "productName",
        "vendor",
        "validationType",
        "supportWildcard",
        "supportStandard",
        "supportIp",
        "supportSan",
        "maxDomain",
        "maxYear",
        "defaultProtectDomain",
        "price",
        "trialDays",
        "dcvMethods",
    }
)
_OPTIONAL_KEYS = frozenset({"issuer"})
# Key types a product may promise (pki/keys.KEY_SPECS spelling; catalog imports nothing of pki).
KEY_TYPES: tuple[str, ...] = ("rsa2048", "rsa3072", "rsa4096", "ec256", "ec384")
# http-01 (RFC 8555 8.3) for the file methods, dns-01 (8.4) through the CNAME delegation.
ACME_DCV_METHODS: frozenset[str] = FILE_DCV_METHODS | {"CNAME_CSR_HASH"}
_TERM_KEYS = {f"price{12 * y:03d}": y for y in range(1, MAX_TERM_YEARS + 1)}
_CODE_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
_PRICE_RE = re.compile(r"(?:0|[1-9][0-9]{0,6})\.[0-9]{2}\Z")


class CatalogError(ValueError):
    """The product data file is malformed; raised at load time, never per request."""


class NotSoldError(LookupError):
    """An unknown product, or a term or extra name the product does not sell (wire code -3)."""


@dataclass(frozen=True)
class Issuer:
    """Who signs a product's certificates: the built-in CA, or an upstream ACME CA by name."""

    type: Literal["builtin", "acme"] = "builtin"
    upstream: str | None = None
    # Key types the product accepts (None: every type its issuer certifies).
    key_types: tuple[str, ...] | None = None

    @property
    def is_acme(self) -> bool:
        return self.type == "acme"


BUILTIN = Issuer()


@dataclass(frozen=True)
class UpstreamLimits:
    """What an upstream certifies, as the catalog checks products against it."""

    max_identifiers: int
    wildcard: bool  # the upstream validates wildcards (dns-01)
    ip: bool
    key_types: frozenset[str]


def _term_key(years: int) -> str:
    return f"price{12 * years:03d}"


def _format_cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def billable_names(names: Iterable[str]) -> list[str]:
    """Names that take a slot and are priced: all but a bare domain whose wildcard is ordered too.

    Names are compared stripped and lower-cased; the result is in that form, in input order.
    """
    lowered = [n.strip().lower() for n in names]
    wildcard_bases = {n[2:] for n in lowered if is_wildcard(n)}
    return [n for n in lowered if is_wildcard(n) or n not in wildcard_bases]


@dataclass(frozen=True)
class Product:
    code: str
    product_name: str
    vendor: str
    validation_type: ValidationType
    support_wildcard: bool
    support_standard: bool
    support_ip: bool
    support_san: bool
    max_domain: int
    max_year: int
    default_protect_domain: int
    # years -> price in USD cents; a missing term is not sold
    base_price: Mapping[int, int] = field(hash=False)
    san_normal_price: Mapping[int, int] = field(hash=False)
    san_wild_price: Mapping[int, int] = field(hash=False)
    trial_days: int | None
    dcv_methods: tuple[str, ...]
    issuer: Issuer = BUILTIN

    @property
    def is_trial(self) -> bool:
        return self.trial_days is not None

    def years_sold(self) -> tuple[int, ...]:
        return tuple(sorted(self.base_price))

    def to_wire(self) -> dict[str, object]:
        """The SPEC 3.6 object exactly as `productList` returns it."""

        def terms(prices: Mapping[int, int]) -> dict[str, str]:
            return {_term_key(y): _format_cents(prices[y]) for y in sorted(prices)}

        return {
            "code": self.code,
            "productName": self.product_name,
            "vendor": self.vendor,
            "supportWildcard": _yn(self.support_wildcard),
            "supportStandard": _yn(self.support_standard),
            "supportIp": _yn(self.support_ip),
            "supportSan": _yn(self.support_san),
            "validationType": self.validation_type,
            "maxDomain": self.max_domain,
            "maxYear": self.max_year,
            "defaultProtectDomain": self.default_protect_domain,
            "price": {
                "basePrice": terms(self.base_price),
                "sanPrice": {
                    "normalPrice": terms(self.san_normal_price),
                    "wildPrice": terms(self.san_wild_price),
                },
            },
        }


class Catalog:
    def __init__(self, products: Iterable[Product]) -> None:
        self._by_code: dict[str, Product] = {}
        for p in products:
            if p.code in self._by_code:
                raise CatalogError(f"product {p.code!r} is listed twice")
            self._by_code[p.code] = p

    @classmethod
    def from_data(cls, data: object, *, source: str = "catalog data") -> Catalog:
        if not isinstance(data, dict) or not isinstance(data.get("products"), list):
            raise CatalogError(f"{source}: expected an object with a 'products' array")
        if data.get("currency") != "USD":
            raise CatalogError(f"{source}: currency must be 'USD' (SPEC 4.19 amounts are USD)")
        products = []
        for index, entry in enumerate(cast(list[object], data["products"])):
            products.append(_parse_product(entry, index, source))
        try:
            return cls(products)
        except CatalogError as exc:
            raise CatalogError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "catalog JSON") -> Catalog:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CatalogError(f"{source}: not valid JSON: {exc}") from None
        return cls.from_data(data, source=source)

    @classmethod
    def load_default(cls) -> Catalog:
        """The catalogue shipped in the package (parsed once per process)."""
        return _load_default()

    @classmethod
    def load(cls, path: Path | None) -> Catalog:
        """The shipped catalogue with the operator's file `path` (CATALOG) merged in: same
        code replaces, new code adds; `"replace": true` drops the shipped products."""
        if path is None:
            return _load_default()
        source = str(path)
        try:
            data = json.loads(path.read_text("utf-8"))
        except OSError as exc:
            raise CatalogError(f"{source}: cannot read: {exc}") from None
        except ValueError as exc:
            raise CatalogError(f"{source}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("products"), list):
            raise CatalogError(f"{source}: expected an object with a 'products' array")
        replace = data.get("replace", False)
        if not isinstance(replace, bool):
            raise CatalogError(f"{source}: replace must be true or false")
        own = cls.from_data({k: v for k, v in data.items() if k != "replace"}, source=source)
        if replace:
            return own
        merged = dict(_load_default()._by_code)
        merged.update(own._by_code)
        return cls(merged.values())

    def check_upstreams(self, upstreams: Mapping[str, UpstreamLimits]) -> None:
        """Refuse products whose upstream is unknown or cannot certify what they promise."""
        for product in self._by_code.values():
            problem = _upstream_problem(product, upstreams)
            if problem is not None:
                raise CatalogError(f"product {product.code!r}: {problem}")

    def get(self, code: str) -> Product | None:
        return self._by_code.get(code)

    def require(self, code: str) -> Product:
        product = self._by_code.get(code)
        if product is None:
            if not code:
                raise NotSoldError("productCode is required")
            raise NotSoldError(
                f"productCode {quoted(code, 100)} is unknown; "
                "call productList for the codes on sale",
            )
        return product

    def products(self, vendor: str | None = None) -> list[Product]:
        """Products in file order; `vendor` is matched exactly (SPEC 4.4: `DigiCert` is invalid)."""
        return [p for p in self._by_code.values() if vendor is None or p.vendor == vendor]

    def vendors(self) -> tuple[str, ...]:
        present = {p.vendor for p in self._by_code.values()}
        return tuple(v for v in VENDORS if v in present)

    def price_cents(self, product: Product, years: int, names: Sequence[str]) -> int:
        """Price in USD cents of `years` of `product` covering `names`.

        Name limits (maxDomain, supportSan, ...) are enforced by `orders.params`; this only
        prices. Raises NotSoldError for a term or an extra name kind that is not sold.
        """
        if years not in product.base_price:
            sold = ", ".join(str(y) for y in product.years_sold())
            raise NotSoldError(
                f"product {product.code} is not sold for {years} years; terms sold: {sold}",
            )
        billable = billable_names(names)
        wild = sum(1 for n in billable if is_wildcard(n))
        normal = len(billable) - wild
        included = product.default_protect_domain
        extra_wild = max(0, wild - included)
        extra_normal = max(0, normal - max(0, included - wild))
        total = product.base_price[years]
        for count, prices, kind in (
            (extra_normal, product.san_normal_price, "names"),
            (extra_wild, product.san_wild_price, "wildcard names"),
        ):
            if not count:
                continue
            if years not in prices:
                raise NotSoldError(
                    f"product {product.code} sells no additional {kind} for {years} years "
                    f"(it includes {included})",
                )
            total += count * prices[years]
        return total


def _upstream_problem(product: Product, upstreams: Mapping[str, UpstreamLimits]) -> str | None:
    issuer = product.issuer
    if not issuer.is_acme:
        return None
    limits = upstreams.get(issuer.upstream or "")
    if limits is None:
        known = ", ".join(sorted(upstreams)) or "none configured"
        return f"issuer names the unknown upstream {issuer.upstream!r} (upstreams: {known})"
    if product.support_wildcard and not limits.wildcard:
        return f"supportWildcard Y but upstream {issuer.upstream!r} has no dns-01 for wildcards"
    if product.max_domain > limits.max_identifiers:
        return (
            f"maxDomain {product.max_domain} > upstream {issuer.upstream!r} "
            f"max_identifiers {limits.max_identifiers}"
        )
    if product.support_ip and not limits.ip:
        return f"supportIp Y but upstream {issuer.upstream!r} does not certify IP addresses"
    missing = [k for k in issuer.key_types or () if k not in limits.key_types]
    if missing:
        return f"keyTypes {', '.join(missing)} are not certified by upstream {issuer.upstream!r}"
    return None


@functools.cache
def _load_default() -> Catalog:
    text = resources.files("certbroker.catalog").joinpath("products.json").read_text("utf-8")
    return Catalog.from_json(text, source="products.json")


# --- load-time validation -------------------------------------------------------------------


def _parse_product(raw: object, index: int, source: str) -> Product:
    if not isinstance(raw, dict):
        raise CatalogError(f"{source}: products[{index}] is not an object")
    entry = cast(dict[str, object], raw)
    code = entry.get("code")
    if not isinstance(code, str) or not _CODE_RE.match(code):
        raise CatalogError(f"{source}: products[{index}] has no valid 'code' (got {code!r})")

    def fail(message: str) -> CatalogError:
        return CatalogError(f"{source}: product {code!r}: {message}")

    keys = set(entry)
    if keys - _OPTIONAL_KEYS != _PRODUCT_KEYS:
        missing = ", ".join(sorted(_PRODUCT_KEYS - keys)) or "-"
        unknown = ", ".join(sorted(keys - _PRODUCT_KEYS - _OPTIONAL_KEYS)) or "-"
        raise fail(f"keys wrong (missing: {missing}; unknown: {unknown})")

    def text(key: str) -> str:
        value = entry[key]
        if not isinstance(value, str) or not value.strip():
            raise fail(f"{key} must be a non-empty string")
        return value

    def flag(key: str) -> bool:
        value = entry[key]
        if value not in ("Y", "N"):
            raise fail(f'{key} must be "Y" or "N", got {value!r}')
        return value == "Y"

    def count(key: str, low: int, high: int) -> int:
        value = entry[key]
        if type(value) is not int or not low <= value <= high:
            raise fail(f"{key} must be an integer {low}-{high}, got {value!r}")
        return value

    vendor = text("vendor")
    if vendor not in VENDORS:
        raise fail(f"vendor {vendor!r} is not one of {', '.join(VENDORS)}")
    vtype = entry["validationType"]
    if vtype not in VALIDATION_TYPES:
        raise fail(f"validationType must be dv, ov or ev, got {vtype!r}")
    wildcard, standard = flag("supportWildcard"), flag("supportStandard")
    ip, san = flag("supportIp"), flag("supportSan")
    max_domain = count("maxDomain", 1, 1000)
    max_year = count("maxYear", 1, 5)
    included = count("defaultProtectDomain", 1, max_domain)
    trial_days = entry["trialDays"]
    if trial_days is not None and (type(trial_days) is not int or not 1 <= trial_days <= 90):
        raise fail(f"trialDays must be null or an integer 1-90, got {trial_days!r}")

    if not (wildcard or standard):
        raise fail("supportWildcard and supportStandard cannot both be N")
    if ip and not standard:
        raise fail("supportIp Y needs supportStandard Y")
    if not san and max_domain != 1:
        raise fail("supportSan N requires maxDomain 1")
    if vtype == "ev" and (wildcard or ip):
        raise fail("EV products cannot allow wildcard or IP names (EV Guidelines 9.2.1, 9.8.1)")

    methods = entry["dcvMethods"]
    if (
        not isinstance(methods, list)
        or not methods
        or len(set(methods)) != len(methods)
        or any(m not in DCV_METHODS for m in methods)
    ):
        raise fail(f"dcvMethods must be a non-empty list of distinct values of {DCV_METHODS}")
    dcv = tuple(m for m in DCV_METHODS if m in methods)
    if not standard and set(dcv) <= FILE_DCV_METHODS:
        raise fail("a wildcard-only product needs a non-file DCV method (BR 3.2.2.4.18)")
    if ip and not FILE_DCV_METHODS & set(dcv):
        raise fail("an IP product needs HTTP_CSR_HASH or HTTPS_CSR_HASH (BR 3.2.2.5)")

    issuer = _parse_issuer(entry.get("issuer"), fail)
    if issuer.is_acme and not set(dcv) <= ACME_DCV_METHODS:
        raise fail(
            "an ACME product offers only HTTP_CSR_HASH, HTTPS_CSR_HASH (http-01, RFC 8555 8.3) "
            "and CNAME_CSR_HASH (dns-01, 8.4); remove "
            + ", ".join(m for m in dcv if m not in ACME_DCV_METHODS)
        )

    base, normal, wild = _parse_prices(entry["price"], fail)
    sold = tuple(sorted(base))
    if not sold or sold[0] != 1 or sold[-1] != max_year:
        raise fail(f"basePrice must sell 1 year and maxYear {max_year}; it sells {sold}")
    for name, prices in (("normalPrice", normal), ("wildPrice", wild)):
        if not set(prices) <= set(base):
            raise fail(f"sanPrice.{name} sells a term that basePrice does not")
    if not standard and normal:
        raise fail("a wildcard-only product cannot sell sanPrice.normalPrice")
    if not wildcard and wild:
        raise fail("a product without wildcard support cannot sell sanPrice.wildPrice")
    if max_domain > included:
        # names beyond the included ones must be purchasable for every term sold
        needed = [("normalPrice", normal)] if standard else []
        needed += [("wildPrice", wild)] if wildcard else []
        for name, prices in needed:
            if set(prices) != set(base):
                raise fail(
                    f"maxDomain {max_domain} > defaultProtectDomain {included} "
                    f"but sanPrice.{name} does not price every term sold"
                )
    if trial_days is not None:
        if sold != (1,) or base[1] != 0 or normal or wild or max_domain != included:
            raise fail('a trial sells only price012 "0.00" and no extra names')
    elif any(v <= 0 for v in (*base.values(), *normal.values(), *wild.values())):
        raise fail("prices of a non-trial product must be above 0.00")

    return Product(
        code=code,
        product_name=text("productName"),
        vendor=vendor,
        validation_type=vtype,
        support_wildcard=wildcard,
        support_standard=standard,
        support_ip=ip,
        support_san=san,
        max_domain=max_domain,
        max_year=max_year,
        default_protect_domain=included,
        base_price=base,
        san_normal_price=normal,
        san_wild_price=wild,
        trial_days=trial_days,
        dcv_methods=dcv,
        issuer=issuer,
    )


def _parse_issuer(raw: object, fail: Callable[[str], CatalogError]) -> Issuer:
    if raw is None:
        return BUILTIN
    if not isinstance(raw, dict):
        raise fail('issuer must be an object like {"type": "acme", "upstream": "NAME"}')
    kind = raw.get("type")
    if kind == "builtin" and set(raw) == {"type"}:
        return BUILTIN
    if kind != "acme":
        raise fail(f"issuer.type must be 'builtin' or 'acme', got {kind!r}")
    unknown = set(raw) - {"type", "upstream", "keyTypes"}
    if unknown:
        raise fail(f"issuer has unknown keys: {', '.join(sorted(unknown))}")
    upstream = raw.get("upstream")
    if not isinstance(upstream, str) or not upstream:
        raise fail("issuer.upstream must name an upstream of the settings")
    key_types = raw.get("keyTypes")
    if key_types is not None:
        if (
            not isinstance(key_types, list)
            or not key_types
            or any(k not in KEY_TYPES for k in key_types)
        ):
            raise fail(f"issuer.keyTypes must be a non-empty list of {', '.join(KEY_TYPES)}")
        key_types = tuple(k for k in KEY_TYPES if k in key_types)
    return Issuer(type="acme", upstream=upstream, key_types=key_types)


def _parse_prices(
    raw: object, fail: Callable[[str], CatalogError]
) -> tuple[Mapping[int, int], Mapping[int, int], Mapping[int, int]]:
    """`price` object -> (base, extra normal name, extra wildcard name) cents by years."""
    if not isinstance(raw, dict) or set(raw) != {"basePrice", "sanPrice"}:
        raise fail("price must be an object with exactly basePrice and sanPrice")
    san = raw["sanPrice"]
    if not isinstance(san, dict) or set(san) != {"normalPrice", "wildPrice"}:
        raise fail("price.sanPrice must be an object with exactly normalPrice and wildPrice")

    def terms(where: str, obj: object) -> Mapping[int, int]:
        if not isinstance(obj, dict):
            raise fail(f"{where} must be an object")
        out: dict[int, int] = {}
        for key, value in obj.items():
            if key not in _TERM_KEYS:
                raise fail(f"{where} has unknown key {key!r} (use price012 ... price072)")
            # decimal strings only: a float would round money
            if not isinstance(value, str) or not _PRICE_RE.match(value):
                raise fail(f'{where}.{key} must be a decimal string like "12.00", got {value!r}')
            out[_TERM_KEYS[key]] = int(Decimal(value) * 100)
        return MappingProxyType(out)

    return (
        terms("price.basePrice", raw["basePrice"]),
        terms("price.sanPrice.normalPrice", san["normalPrice"]),
        terms("price.sanPrice.wildPrice", san["wildPrice"]),
    )
