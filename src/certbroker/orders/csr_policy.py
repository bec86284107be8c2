"""The key of an order: the customer's CSR parsed and checked against domainInfo and the key
policy, or a key and CSR generated for the customer."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.params import OrderParams
from certbroker.pki.csr import CsrError, ParsedCsr, build_csr, parse_csr
from certbroker.pki.key_pool import KeySource
from certbroker.pki.keys import (
    KEY_SPECS,
    KeyFormatError,
    PrivateKey,
    PublicKey,
    generate_private_key,
    load_private_key_pem,
    public_key_matches,
)
from certbroker.policy.keys import key_refusal, spki_sha256
from certbroker.store.compromised_keys import is_compromised


@dataclass(frozen=True)
class OrderKey:
    csr: ParsedCsr
    # Present when certbroker holds the key: generated here, or handed over with the CSR.
    private_key: PrivateKey | None
    generated: bool
    key_spec: str | None


def requested_names(params: OrderParams) -> list[str]:
    """The names the certificate will carry: domainInfo, already canonical (params.py)."""
    return [domain.name for domain in params.domains]


def require_certifiable_key(
    ctx: OrdersContext, public_key: PublicKey, field: str, session: Session | None = None
) -> None:
    """The key policy (policy/keys.py) with this CA's compromised-key list; ApiError(-1) under
    `field` when the key may not be certified."""
    digest = spki_sha256(public_key)
    if session is not None:
        compromised = is_compromised(session, digest)
    else:
        with ctx.db.read() as reader:
            compromised = is_compromised(reader, digest)
    problem = key_refusal(public_key, compromised=compromised, weak_keys=ctx.policy.weak_keys)
    if problem is not None:
        raise ApiError.invalid(field, problem.reason)


def check_customer_csr(
    ctx: OrdersContext, params: OrderParams, names: list[str], session: Session | None = None
) -> OrderKey:
    """A customer's CSR: it parses, verifies, has a key the policy allows, and asks for no
    other names.

    The certificate carries the names of domainInfo (the validated ones); a CSR naming only the
    primary name, as `openssl req` makes by default, is therefore accepted, but a CSR name that
    is not in domainInfo is refused: we would never validate it.
    """
    assert params.csr is not None
    try:
        csr = parse_csr(params.csr)
    except CsrError as exc:
        raise ApiError.invalid("csr", str(exc)) from exc
    require_certifiable_key(ctx, csr.public_key, "csr", session)
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
