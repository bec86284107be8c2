"""The CSR of an order: parsed, checked against domainInfo, or generated for the customer."""

from __future__ import annotations

from dataclasses import dataclass

from certbroker.orders.errors import ApiError, Code
from certbroker.orders.params import OrderParams
from certbroker.pki.csr import CsrError, ParsedCsr, build_csr, parse_csr
from certbroker.pki.key_pool import KeySource
from certbroker.pki.keys import (
    KEY_SPECS,
    KeyFormatError,
    PrivateKey,
    generate_private_key,
    load_private_key_pem,
    public_key_matches,
)
from certbroker.pki.names import NameSyntaxError, normalize_name


@dataclass(frozen=True)
class OrderKey:
    csr: ParsedCsr
    # Present when certbroker holds the key: generated here, or handed over with the CSR.
    private_key: PrivateKey | None
    generated: bool
    key_spec: str | None


def requested_names(params: OrderParams) -> list[str]:
    out = []
    for domain in params.domains:
        try:
            out.append(normalize_name(domain.name))
        except NameSyntaxError as exc:
            raise ApiError.invalid("domainInfo", str(exc)) from exc
    return out


def check_customer_csr(params: OrderParams, names: list[str]) -> OrderKey:
    """A customer's CSR: it parses, verifies, has an allowed key, and asks for no other names.

    The certificate carries the names of domainInfo (the validated ones); a CSR naming only the
    primary name, as `openssl req` makes by default, is therefore accepted, but a CSR name that
    is not in domainInfo is refused: we would never validate it.
    """
    assert params.csr is not None
    try:
        csr = parse_csr(params.csr)
    except CsrError as exc:
        raise ApiError.invalid("csr", str(exc)) from exc
    wanted = set(names)
    stray = [name for name in csr.names if name not in wanted]
    if stray:
        raise ApiError.invalid(
            "csr",
            f"the CSR names {', '.join(stray)}, which domainInfo does not list "
            f"(domainInfo: {', '.join(names)})",
        )
    key: PrivateKey | None = None
    if params.private_key:
        try:
            key = load_private_key_pem(params.private_key)
        except KeyFormatError as exc:
            raise ApiError.invalid("privateKey", str(exc)) from exc
        if not public_key_matches(key, csr.public_key):
            raise ApiError.invalid("privateKey", "privateKey does not match the CSR's public key")
    return OrderKey(csr=csr, private_key=key, generated=False, key_spec=None)


def key_spec_for(params: OrderParams, default: str) -> str:
    spec = params.key_spec or default
    if spec not in KEY_SPECS:
        raise ApiError(
            Code.INVALID, {"keyType": [f"keyType must be one of {', '.join(KEY_SPECS)}"]}
        )
    return spec


def generate_order_key(names: list[str], spec: str, keys: KeySource | None = None) -> OrderKey:
    """No CSR sent: make the key and the CSR for the customer (SPEC 3.1 `csr`).

    `keys` (the key pool) gives a key made ahead of time when it has one; else it is made here.
    """
    key = keys.take(spec) if keys is not None else None
    if key is None:
        key = generate_private_key(spec)
    csr = build_csr(key, names)
    return OrderKey(csr=csr, private_key=key, generated=True, key_spec=spec)
