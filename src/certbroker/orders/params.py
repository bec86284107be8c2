"""Decoding and checking the order `params` of validate / place / renew / replace (SPEC 3.1-3.4).

`parse_order_params` collects every problem into one `{field: [messages]}` mapping and raises
ApiError(-1) with it, so a reseller fixes a payload in one round trip. Field keys are the wire
names: `server`, `dcvMethod`, `domainInfo`, `domainInfo.<i>.domainName`, `domainInfo.<i>.dcvMethod`,
`domainInfo.<i>.dcvEmail`, `organizationInfo`, `organizationInfo.<key>`, `Administrator`, `tech`,
`finance`, `uniqueValue`, `csr`, `privateKey`, `keyType`, `originalfromOthers`.

Leniency (SPEC 1.2, 3.1): `params` and nested objects may be JSON strings; empty strings count as
absent; unknown keys are ignored; numbers are accepted where text is expected (post codes, phone
numbers); `dcvMethod` is matched case-insensitively. `server` is matched exactly, because the live
service rejects upper-case codes (SPEC 3.1) and clients must learn that here, not in production.

certbroker extension: `keyType` chooses the key the platform generates when no `csr` is sent:
`rsa2048` (default), `rsa3072`, `rsa4096`, `ec256`, `ec384`; the aliases `RSA` (= rsa2048) and
`ECC` / `ECDSA` (= ec256) are accepted. It is ignored when a `csr` is sent (the CSR fixes the key).
`OrderParams.key_spec` is None when keyType was not sent, so the orders layer applies its
configured default (`DEFAULT_KEY_TYPE` out of the box).

Only the shape of a CSR is checked here ("-----BEGIN"); parsing, signature and key checks belong to
the PKI layer and the key policy. Each domainName goes through the name policy (policy/names.py):
it is refused with that policy's reason or carried on in canonical form (A-labels, lower case,
no trailing dot), so a U-label such as `bücher.example` is accepted as `xn--bcher-kva.example`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast, overload

from certbroker.catalog.catalog import DCV_METHODS, FILE_DCV_METHODS, Product, billable_names
from certbroker.catalog.countries import is_country_code
from certbroker.orders.approvers import LOCAL_PARTS, approver_addresses
from certbroker.orders.errors import ApiError, Code, FieldErrors
from certbroker.pki.names import NameKind, classify_name
from certbroker.pki.text import safe_text
from certbroker.policy.names import DEFAULT_POLICY, NamePolicy, NameRefused

__all__ = [
    "DCV_METHODS",
    "KEY_TYPES",
    "SERVER_CODES",
    "Contact",
    "DomainRequest",
    "OrderParams",
    "Organization",
    "decode_json_field",
    "decode_params",
    "parse_order_params",
]

# SPEC Appendix D (28 documented codes, in documented order) + `cpanel`, accepted live [OBS].
SERVER_CODES: tuple[str, ...] = (
    "apachessl",
    "citrix",
    "domino",
    "ensim",
    "hsphere",
    "iis4",
    "iis6",
    "iis7",
    "iplanet",
    "javawebserv",
    "netscape",
    "ibmhttp",
    "novel",
    "oracle",
    "plesk",
    "tomcat",
    "webstar",
    "whmcpane",
    "other",
    "apache2",
    "c2net",
    "cisco",
    "cobaltseries",
    "nginx",
    "apacheraven",
    "redhatsap",
    "website",
    "zeusv3",
    "cpanel",
)
KEY_TYPES: tuple[str, ...] = ("rsa2048", "rsa3072", "rsa4096", "ec256", "ec384")
DEFAULT_KEY_TYPE = "rsa2048"
_KEY_TYPE_ALIASES = {"rsa": "rsa2048", "ecc": "ec256", "ecdsa": "ec256"}
# BR 3.2.2.4.4: constructed e-mail to the domain contact uses exactly these local parts.
APPROVER_LOCAL_PARTS: tuple[str, ...] = LOCAL_PARTS  # the rule lives in orders/approvers.py
ORGANIZATION_ID_TYPES: tuple[str, ...] = ("TYDMZ", "OTHERS")

MAX_TEXT = 255
MAX_PEM = 32 * 1024
MAX_DOMAIN_ENTRIES = 1000
MAX_JSON_CHARS = 1024 * 1024  # a JSON-string field larger than this is refused before parsing


# --- result types ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainRequest:
    name: str  # as given, stripped and lower-cased
    dcv_method: str
    dcv_email: str | None  # only for EMAIL, lower-cased

    @property
    def is_wildcard(self) -> bool:
        return self.name.startswith("*.")

    def to_wire(self) -> dict[str, str]:
        return {
            "domainName": self.name,
            "dcvMethod": self.dcv_method,
            "dcvEmail": self.dcv_email or "",
        }


# (attribute, wire key) of a Contact, SPEC 3.3; note the wire spelling `organation`.
_CONTACT_KEYS: tuple[tuple[str, str], ...] = (
    ("first_name", "firstName"),
    ("last_name", "lastName"),
    ("job", "job"),
    ("email", "email"),
    ("mobile", "mobile"),
    ("organation", "organation"),
    ("address", "address"),
    ("city", "city"),
    ("state", "state"),
    ("post_code", "postCode"),
    ("country", "country"),
    ("id_type", "idType"),
)
_CONTACT_REQUIRED: tuple[str, ...] = (
    "organation",
    "address",
    "city",
    "state",
    "postCode",
    "country",
)
# (wire key of the block, name used in messages), SPEC 3.1 / live wording
_ROLES: tuple[tuple[str, str], ...] = (
    ("Administrator", "administrator"),
    ("tech", "tech"),
    ("finance", "finance"),
)


@dataclass(frozen=True)
class Contact:
    first_name: str | None = None
    last_name: str | None = None
    job: str | None = None
    email: str | None = None
    mobile: str | None = None
    organation: str | None = None
    address: str | None = None
    city: str | None = None
    state: str | None = None
    post_code: str | None = None
    country: str | None = None
    id_type: str | None = None

    def to_wire(self) -> dict[str, str]:
        return _to_wire(self, _CONTACT_KEYS)


# (attribute, wire key, required for OV/EV), SPEC 3.4
_ORGANIZATION_KEYS: tuple[tuple[str, str, bool], ...] = (
    ("organization_name", "organizationName", True),
    ("organization_address", "organizationAddress", True),
    ("organization_city", "organizationCity", True),
    ("organization_country", "organizationCountry", True),
    ("organization_post_code", "organizationPostCode", True),
    ("organization_mobile", "organizationMobile", True),
    ("organization_state", "organizationState", False),
    ("organization_reg_number", "organizationRegNumber", False),
    ("id_type", "idType", False),
    ("organization_duns", "organizationDuns", False),
    ("organization_division", "organizationDivision", False),
)


@dataclass(frozen=True)
class Organization:
    organization_name: str | None = None
    organization_address: str | None = None
    organization_city: str | None = None
    organization_country: str | None = None
    organization_post_code: str | None = None
    organization_mobile: str | None = None
    organization_state: str | None = None
    organization_reg_number: str | None = None
    id_type: str | None = None
    organization_duns: str | None = None
    organization_division: str | None = None

    def to_wire(self) -> dict[str, str]:
        return _to_wire(self, tuple((a, w) for a, w, _ in _ORGANIZATION_KEYS))


def _to_wire(obj: object, keys: tuple[tuple[str, str], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for attr, wire in keys:
        value = getattr(obj, attr)
        if value is not None:
            out[wire] = value
    return out


@dataclass(frozen=True)
class OrderParams:
    csr: str | None
    private_key: str | None
    server: str | None
    unique_value: str | None
    domains: tuple[DomainRequest, ...]
    organization: Organization | None
    administrator: Contact | None
    tech: Contact | None
    finance: Contact | None
    original_from_others: bool
    key_spec: str | None  # keyType to generate; None: not sent (use the default) or CSR sent

    def to_apply_params(self) -> dict[str, object]:
        """The echo `collect` returns as `applyParams` (SPEC 4.3); never includes privateKey."""
        out: dict[str, object] = {}
        if self.csr is not None:
            out["csr"] = self.csr
        if self.server is not None:
            out["server"] = self.server
        out["domainInfo"] = [d.to_wire() for d in self.domains]
        for key, contact in (
            ("Administrator", self.administrator),
            ("tech", self.tech),
            ("finance", self.finance),
        ):
            if contact is not None:
                out[key] = contact.to_wire()
        if self.organization is not None:
            out["organizationInfo"] = self.organization.to_wire()
        if self.unique_value is not None:
            out["uniqueValue"] = self.unique_value
        return out


# --- JSON decoding ---------------------------------------------------------------------------


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


@overload
def decode_json_field(raw: object, field: str, expect: type[list[Any]]) -> list[object]: ...
@overload
def decode_json_field(
    raw: object, field: str, expect: type[dict[Any, Any]]
) -> dict[str, object]: ...
def decode_json_field(
    raw: object, field: str, expect: type[list[Any]] | type[dict[Any, Any]]
) -> list[object] | dict[str, object]:
    """`raw` as a JSON array/object: either already parsed or a JSON-encoded string (SPEC 1.2).

    Raises ApiError(-1, {field: [...]}) when it is absent, not JSON, or of the wrong kind.
    """
    wanted = "a JSON array" if expect is list else "a JSON object"
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ApiError.invalid(field, f"{field} is required: {wanted}")
    value = raw
    if isinstance(raw, str):
        if len(raw) > MAX_JSON_CHARS:
            raise ApiError.invalid(
                field, f"{field} is {len(raw)} characters long; at most {MAX_JSON_CHARS} allowed"
            )
        try:
            value = json.loads(raw, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise ApiError.invalid(
                field,
                f"{field} must be {wanted}; the string is not valid JSON "
                f"({safe_text(exc.msg)} at line {exc.lineno} column {exc.colno})",
            ) from None
        except (ValueError, RecursionError):
            # NaN/Infinity, over-long integers, pathological nesting
            raise ApiError.invalid(
                field, f"{field} must be {wanted}; the string is not valid JSON"
            ) from None
    if expect is list and isinstance(value, list):
        return cast(list[object], value)
    if expect is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return cast(dict[str, object], value)
    raise ApiError.invalid(field, f"{field} must be {wanted}, got {_json_kind(value)}")


def decode_params(raw: object) -> dict[str, object]:
    """The `params` form field as a dict (JSON string or already-parsed object)."""
    if _absent(raw):
        raise ApiError.invalid(
            "params", "params is required: a JSON object (or a JSON-encoded string holding one)"
        )
    return decode_json_field(raw, "params", dict)


# --- helpers ---------------------------------------------------------------------------------


class _Errors:
    def __init__(self) -> None:
        self.fields: FieldErrors = {}

    def add(self, field: str, message: str) -> None:
        self.fields.setdefault(field, []).append(message)

    def merge(self, exc: ApiError) -> None:
        if isinstance(exc.errors, str):
            self.add("params", exc.errors)
        else:
            for field, messages in exc.errors.items():
                for message in messages:
                    self.add(field, message)

    def __contains__(self, field: str) -> bool:
        return field in self.fields


def _absent(value: object) -> bool:
    """SPEC 3.1: empty strings (and null) mean "not sent"."""
    return value is None or (isinstance(value, str) and not value.strip())


def _text(
    errs: _Errors,
    obj: Mapping[str, object],
    key: str,
    field: str,
    *,
    label: str | None = None,
    max_len: int = MAX_TEXT,
    multiline: bool = False,
) -> str | None:
    """A stripped string or None when absent; numbers are accepted as text (SPEC 1.2).

    Errors are filed under `field`; `label` is the subject of the message (default: `key`).
    """
    value = obj.get(key)
    subject = label or key
    if _absent(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errs.add(field, f"{subject} must be a string, got {_json_kind(value)}")
        return None
    text = value.strip() if isinstance(value, str) else str(value)
    if len(text) > max_len:
        errs.add(field, f"{subject} is {len(text)} characters long; at most {max_len} allowed")
        return None
    allowed = "\r\n\t" if multiline else ""
    if any((c < " " and c not in allowed) or c == "\x7f" for c in text):
        # NUL and other controls break certificate subjects, logs and databases
        errs.add(field, f"{subject} contains control characters")
        return None
    return text


def _object(errs: _Errors, raw: object, field: str) -> dict[str, object] | None:
    """A nested object (possibly a JSON string); None when absent, `{}` or all values empty."""
    if _absent(raw):
        return None
    try:
        obj = decode_json_field(raw, field, dict)
    except ApiError as exc:
        errs.merge(exc)
        return None
    return obj if any(not _absent(v) for v in obj.values()) else None


# --- domain names ----------------------------------------------------------------------------


def _dcv_method(errs: _Errors, value: str, field: str, product: Product) -> str | None:
    method = value.upper()
    if method not in product.dcv_methods:
        # ACME has no e-mail validation for TLS names (RFC 8823 is S/MIME only).
        where = f"product {product.code} (ACME)" if product.issuer.is_acme else "this product"
        errs.add(
            field,
            f"dcvMethod {value} is not supported by {where}; use one of "
            f"{', '.join(product.dcv_methods)}",
        )
        return None
    return method


def _domains(
    errs: _Errors, params: Mapping[str, object], product: Product, names: NamePolicy
) -> tuple[DomainRequest, ...]:
    global_method: str | None = None
    global_text = _text(errs, params, "dcvMethod", "dcvMethod")
    if global_text is not None:
        global_method = _dcv_method(errs, global_text, "dcvMethod", product)

    raw = params.get("domainInfo")
    if _absent(raw):
        errs.add(
            "domainInfo",
            "domainInfo is required: a JSON array with one "
            "{domainName, dcvMethod, dcvEmail} object per name",
        )
        return ()
    try:
        items = decode_json_field(raw, "domainInfo", list)
    except ApiError as exc:
        errs.merge(exc)
        return ()
    if not items:
        errs.add("domainInfo", "domainInfo must contain at least one domain")
        return ()
    if len(items) > MAX_DOMAIN_ENTRIES:
        errs.add(
            "domainInfo",
            f"domainInfo has {len(items)} entries; at most {MAX_DOMAIN_ENTRIES} are accepted",
        )
        return ()

    # pass 1: shape, syntax, duplicates
    entries: list[tuple[int, dict[str, object], str | None, NameKind | None]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        prefix = f"domainInfo.{i}"
        if not isinstance(item, dict):
            errs.add(
                prefix,
                f"each domainInfo entry must be an object with domainName, got {_json_kind(item)}",
            )
            continue
        entry = cast(dict[str, object], item)
        name = _text(errs, entry, "domainName", f"{prefix}.domainName")
        kind: NameKind | None = None
        if name is None:
            if f"{prefix}.domainName" not in errs:
                errs.add(f"{prefix}.domainName", "domainName is required")
        else:
            try:
                name = names.check(name)  # canonical: A-labels, lower case, no trailing dot
            except NameRefused as exc:
                errs.add(f"{prefix}.domainName", exc.reason)
            else:
                kind = classify_name(name)
                if name in seen:
                    errs.add(
                        f"{prefix}.domainName",
                        f"{name} is listed twice (domainInfo entries {seen[name]} and {i})",
                    )
                    kind = None
                else:
                    seen[name] = i
        entries.append((i, entry, name, kind))

    # pass 2: what the product accepts, then how each name is validated
    wildcard_bases = {n[2:] for _, _, n, k in entries if n is not None and k == "wildcard"}
    result: list[DomainRequest] = []
    accepted: list[str] = []
    for i, entry, name, kind in entries:
        prefix = f"domainInfo.{i}"
        method = _entry_method(errs, entry, prefix, global_text, global_method, product)
        if name is None or kind is None:
            continue
        unsupported = _unsupported_type(name, kind, product, wildcard_bases)
        if unsupported:
            errs.add(f"{prefix}.domainName", unsupported)
            continue
        accepted.append(name)
        if method is None:
            continue
        if kind == "wildcard" and method in FILE_DCV_METHODS:
            # BR 3.2.2.4.18: file-based validation cannot prove control of a wildcard's namespace
            errs.add(
                f"{prefix}.dcvMethod",
                f"{method} cannot validate the wildcard name {name} (BR 3.2.2.4.18); use "
                f"{' or '.join(m for m in product.dcv_methods if m not in FILE_DCV_METHODS)}",
            )
            continue
        if kind == "ip" and method not in FILE_DCV_METHODS:
            # BR 3.2.2.5: no DNS or constructed-e-mail method exists for IP addresses
            errs.add(
                f"{prefix}.dcvMethod",
                f"{method} cannot validate the IP address {name} (BR 3.2.2.5); use "
                f"{' or '.join(m for m in product.dcv_methods if m in FILE_DCV_METHODS)}",
            )
            continue
        email = _dcv_email(errs, entry, prefix, name, method)
        if method == "EMAIL" and email is None:
            continue
        result.append(DomainRequest(name=name, dcv_method=method, dcv_email=email))

    _name_count(errs, accepted, product)
    if product.issuer.is_acme:
        # RFC 8555 7.4: the upstream certifies exactly the identifiers ordered; the customer
        # lists the base domain next to its wildcard when they want it.
        return tuple(result)
    return _with_wildcard_bases(result)


def _with_wildcard_bases(domains: list[DomainRequest]) -> tuple[DomainRequest, ...]:
    """A wildcard certifies its base domain too (`*.example.com` and `example.com`, as the
    commercial CAs sell them; the base takes no slot and costs nothing, catalog.billable_names).
    A base not listed is added right after its wildcard, validated by the wildcard's method: the
    DNS record and the approver addresses of `*.d` are those of `d` (BR 3.2.2.4)."""
    listed = {d.name for d in domains}
    out: list[DomainRequest] = []
    for domain in domains:
        out.append(domain)
        base = domain.name[2:]
        if domain.is_wildcard and base not in listed:
            out.append(DomainRequest(base, domain.dcv_method, domain.dcv_email))
            listed.add(base)
    return tuple(out)


def _entry_method(
    errs: _Errors,
    entry: Mapping[str, object],
    prefix: str,
    global_text: str | None,
    global_method: str | None,
    product: Product,
) -> str | None:
    own = _text(errs, entry, "dcvMethod", f"{prefix}.dcvMethod")
    if own is not None:  # per-domain wins over params.dcvMethod (SPEC 3.2)
        return _dcv_method(errs, own, f"{prefix}.dcvMethod", product)
    if global_text is None and f"{prefix}.dcvMethod" not in errs:
        errs.add(
            f"{prefix}.dcvMethod",
            "dcvMethod is required (per domain or as "
            f"params.dcvMethod); use one of "
            f"{', '.join(product.dcv_methods)}",
        )
    return global_method  # None when the global value was bad: reported once under dcvMethod


def _dcv_email(
    errs: _Errors, entry: Mapping[str, object], prefix: str, name: str, method: str
) -> str | None:
    field = f"{prefix}.dcvEmail"
    email = _text(errs, entry, "dcvEmail", field)
    if method != "EMAIL":
        return None  # clients send "" or a stale address for other methods
    allowed = approver_addresses(name)
    if not allowed:
        if field not in errs:
            errs.add(field, f"{name} is a public suffix; e-mail validation is not possible")
        return None
    if email is None:
        if field not in errs:
            errs.add(
                field,
                f"dcvEmail is required when dcvMethod is EMAIL; use one of {', '.join(allowed)}",
            )
        return None
    email = email.lower()
    if email not in allowed:
        errs.add(
            field,
            f"dcvEmail {email} is not an approver address for {name}; use one of "
            f"{', '.join(allowed)}",
        )
        return None
    return email


def _unsupported_type(
    name: str, kind: NameKind, product: Product, wildcard_bases: set[str]
) -> str | None:
    if kind == "wildcard" and not product.support_wildcard:
        return f"The product does not support wildcard type({name})"  # live wording
    if kind == "ip" and not product.support_ip:
        return f"The product does not support IP address type({name})"
    if kind == "dns" and not product.support_standard and name not in wildcard_bases:
        # the base of an ordered wildcard rides along for free (catalog docstring)
        return f"The product does not support normal type({name})"  # live wording, SPEC 4.2
    return None


def _name_count(errs: _Errors, names: list[str], product: Product) -> None:
    count = len(billable_names(names))
    free = " (the base domain of a wildcard is included free)" if product.support_wildcard else ""
    if not product.support_san and count > 1:
        errs.add(
            "domainInfo",
            f"product {product.code} is a single-name certificate and does not "
            f"support additional names (SAN); {count} names given{free}",
        )
    elif count > product.max_domain:
        errs.add(
            "domainInfo",
            f"product {product.code} covers at most {product.max_domain} "
            f"names; {count} given{free}",
        )


# --- organization and contacts ---------------------------------------------------------------


def _country(value: str | None) -> tuple[str | None, bool]:
    """(upper-cased code, ok)."""
    if value is None:
        return None, True
    code = value.upper()
    return code, is_country_code(code)


def _organization(
    errs: _Errors, params: Mapping[str, object], *, required: bool, complete: bool
) -> Organization | None:
    obj = _object(errs, params.get("organizationInfo"), "organizationInfo")
    if obj is None:
        if required and "organizationInfo" not in errs:
            errs.add("organizationInfo", "organizationInfo is required")
        return None
    values: dict[str, str | None] = {}
    for attr, key, needed in _ORGANIZATION_KEYS:
        field = f"organizationInfo.{key}"
        value = _text(errs, obj, key, field)
        if value is None and needed and complete and field not in errs:
            errs.add(field, f"{key} is required")
        values[attr] = value
    country, ok = _country(values["organization_country"])
    if not ok:
        errs.add(
            "organizationInfo.organizationCountry",
            f"organizationCountry {country} is not an ISO 3166-1 alpha-2 country code",
        )
    values["organization_country"] = country
    id_type = values["id_type"]
    if id_type is not None:
        values["id_type"] = id_type.upper()
        if values["id_type"] not in ORGANIZATION_ID_TYPES:
            errs.add(
                "organizationInfo.idType", f"idType {id_type} is not supported; use TYDMZ or OTHERS"
            )
    return Organization(**values)


def _contact(
    errs: _Errors,
    params: Mapping[str, object],
    key: str,
    role: str,
    *,
    required: bool,
    complete: bool,
) -> Contact | None:
    raw = params.get(key)
    if _absent(raw) and key == "Administrator":
        raw = params.get("administrator")  # tolerated spelling; the wire uses a capital A
    obj = _object(errs, raw, key)
    if obj is None and key in errs:
        return None
    source: Mapping[str, object] = obj or {}
    need_fields = required if obj is None else complete
    values: dict[str, str | None] = {}
    for attr, wire in _CONTACT_KEYS:
        value = _text(errs, source, wire, key, label=f"The {role}’s {wire}")
        if value is None and need_fields and wire in _CONTACT_REQUIRED:
            message = f"The {role}’s {wire} is required"  # live wording (SPEC 3.3)
            if wire == "organation" and not _absent(source.get("organization")):
                message += " (the API spells this key ‘organation’; ‘organization’ is ignored)"
            errs.add(key, message)
        values[attr] = value
    if obj is None:
        return None
    country, ok = _country(values["country"])
    if not ok:
        errs.add(key, f"The {role}’s country {country} is not an ISO 3166-1 alpha-2 country code")
    values["country"] = country
    if values["id_type"] is not None:
        values["id_type"] = values["id_type"].upper()
    return Contact(**values)


# --- the rest --------------------------------------------------------------------------------


def _pem(
    errs: _Errors, params: Mapping[str, object], key: str, *, required: bool, what: str
) -> str | None:
    value = _text(errs, params, key, key, max_len=MAX_PEM, multiline=True)
    if value is None:
        if required and key not in errs:
            errs.add(key, f"{key} is required")
        return None
    if "-----BEGIN" not in value:
        errs.add(key, f"{key} must be PEM text ({what})")
        return None
    return value


def _key_type(errs: _Errors, params: Mapping[str, object], csr_sent: bool) -> str | None:
    """The canonical keyType, or None when not sent (the orders policy default applies, which
    is DEFAULT_KEY_TYPE unless the operator changed it) or when a CSR fixes the key."""
    value = _text(errs, params, "keyType", "keyType")
    if value is None:
        return None
    lowered = value.lower()
    spec = _KEY_TYPE_ALIASES.get(lowered, lowered)
    if spec not in KEY_TYPES:
        errs.add(
            "keyType",
            f"keyType {value} is not supported; use one of "
            f"{', '.join(KEY_TYPES)} (aliases: RSA, ECC, ECDSA)",
        )
        return None
    return None if csr_sent else spec


def _server(errs: _Errors, params: Mapping[str, object], *, required: bool) -> str | None:
    value = _text(errs, params, "server", "server")
    if value is None:
        if required and "server" not in errs:
            errs.add(
                "server",
                "server is required: a web-server platform code; use other when none applies",
            )
        return None
    if value not in SERVER_CODES:
        hint = f" (codes are lower-case: {value.lower()})" if value.lower() in SERVER_CODES else ""
        errs.add(
            "server",
            f"server {value} is not a supported platform code{hint}; use one of "
            f"{', '.join(SERVER_CODES)}",
        )
        return None
    return value


def _unique_value(errs: _Errors, params: Mapping[str, object]) -> str | None:
    value = _text(errs, params, "uniqueValue", "uniqueValue", max_len=20)
    if value is not None and not (value.isascii() and value.isalnum()):
        errs.add("uniqueValue", "uniqueValue may contain only the characters a-z, A-Z and 0-9")
        return None
    return value


def _flag(errs: _Errors, params: Mapping[str, object], key: str) -> bool:
    value = params.get(key)
    if _absent(value):
        return False
    if isinstance(value, str):
        value = value.strip().lower()
    if value in (1, "1", "true"):  # True == 1
        return True
    if value in (0, "0", "false"):
        return False
    errs.add(key, f"{key} must be 0 or 1")
    return False


def parse_order_params(
    raw: object,
    product: Product,
    *,
    csr_required: bool = False,
    replace: bool = False,
    names: NamePolicy = DEFAULT_POLICY,
) -> OrderParams:
    """Decode and check `params` for an order of `product` (SPEC 3.1-3.4, Appendix G).

    `csr_required`: renew (SPEC 4.8). `replace` (SPEC 4.7): the csr is required, while `server`,
    `organizationInfo` and contacts become optional (checked when sent).
    `names`: the name policy (policy/names.py) every domainName must pass.
    Raises ApiError(-1, {field: [messages]}) listing every problem found.
    """
    params = decode_params(raw)
    errs = _Errors()
    csr = _pem(
        errs,
        params,
        "csr",
        required=csr_required or replace,
        what="-----BEGIN CERTIFICATE REQUEST-----",
    )
    private_key = _pem(
        errs, params, "privateKey", required=False, what="-----BEGIN PRIVATE KEY-----"
    )
    if private_key is not None and csr is None and "csr" not in errs:
        errs.add("privateKey", "privateKey can only be sent together with the csr it belongs to")
    key_spec = _key_type(errs, params, csr_sent=csr is not None or "csr" in errs)
    server = _server(errs, params, required=not replace)
    unique_value = _unique_value(errs, params)
    original = _flag(errs, params, "originalfromOthers")
    domains = _domains(errs, params, product, names)
    # Appendix G: OV/EV need the organisation and all three contacts; DV may send them.
    # (replace sends them only to change them, but what is sent must be complete)
    complete = product.validation_type != "dv"
    required = complete and not replace
    organization = _organization(errs, params, required=required, complete=complete)
    contacts = [
        _contact(errs, params, key, role, required=required, complete=complete)
        for key, role in _ROLES
    ]
    if errs.fields:
        raise ApiError(Code.INVALID, errs.fields)
    return OrderParams(
        csr=csr,
        private_key=private_key,
        server=server,
        unique_value=unique_value,
        domains=domains,
        organization=organization,
        administrator=contacts[0],
        tech=contacts[1],
        finance=contacts[2],
        original_from_others=original,
        key_spec=key_spec,
    )


def parse_dcv_choice(
    product: Product, name: str, raw_method: object, raw_email: object
) -> DomainRequest:
    """Check a new DCV method for one name of an order (updateDCV, SPEC 4.9) with the rules of
    `place`: the product's methods, no file method for wildcards (BR 3.2.2.4.18), file methods
    only for IPs (BR 3.2.2.5), an approver address for EMAIL."""
    errs = _Errors()
    entry = {"dcvMethod": raw_method, "dcvEmail": raw_email}
    text = _text(errs, entry, "dcvMethod", "dcvMethod")
    method = None
    if text is None and "dcvMethod" not in errs:
        errs.add("dcvMethod", f"dcvMethod is required; use one of {', '.join(product.dcv_methods)}")
    elif text is not None:
        method = _dcv_method(errs, text, "dcvMethod", product)
    kind = classify_name(name)  # a name of the order: checked when it was placed
    email = None
    if method is not None:
        if kind == "wildcard" and method in FILE_DCV_METHODS:
            errs.add(
                "dcvMethod", f"{method} cannot validate the wildcard name {name} (BR 3.2.2.4.18)"
            )
        elif kind == "ip" and method not in FILE_DCV_METHODS:
            errs.add("dcvMethod", f"{method} cannot validate the IP address {name} (BR 3.2.2.5)")
        else:
            email = _dcv_email(errs, entry, "", name, method)
    if errs.fields or method is None:
        raise ApiError(Code.INVALID, {k.lstrip("."): v for k, v in errs.fields.items()})
    return DomainRequest(name=name, dcv_method=method, dcv_email=email)
