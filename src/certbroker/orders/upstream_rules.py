"""What `place` checks beyond the common rules for a product an upstream ACME CA issues."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbroker.catalog.catalog import Product
from certbroker.orders.context import OrdersContext
from certbroker.orders.csr_policy import OrderKey
from certbroker.orders.errors import ApiError
from certbroker.orders.params import DomainRequest
from certbroker.pki.keys import PublicKey


def key_type_of(public_key: PublicKey) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec256", "secp384r1": "ec384"}.get(public_key.curve.name, "ec")
    return "unknown"


def check_upstream_order(
    ctx: OrdersContext, product: Product, key: OrderKey, names: list[str]
) -> None:
    """RFC 8555 7.4: the CSR names exactly the order's identifiers, in its subjectAltName
    (Boulder refuses CN-only names), and carries a key type the upstream certifies."""
    issuer = product.issuer
    if not issuer.is_acme:
        return
    config = ctx.upstreams.get(issuer.upstream or "")
    allowed = issuer.key_types or (config.key_types if config else ())
    kind = key_type_of(key.csr.public_key)
    if kind not in allowed:
        raise ApiError.invalid(
            "csr" if not key.generated else "keyType",
            f"product {product.code} certifies {', '.join(allowed)} keys, not {kind}",
        )
    in_san = set(key.csr.dns_names) | set(key.csr.ip_addresses)
    if in_san != set(names):
        missing = sorted(set(names) - in_san)
        extra = sorted(in_san - set(names))
        detail = "; ".join(
            part
            for part in (
                f"missing from its subjectAltName: {', '.join(missing)}" if missing else "",
                f"not in domainInfo: {', '.join(extra)}" if extra else "",
            )
            if part
        )
        raise ApiError.invalid(
            "csr",
            f"product {product.code} (ACME) needs a CSR whose subjectAltName lists exactly "
            f"domainInfo ({detail})",
        )


DNS01_METHOD = "CNAME_CSR_HASH"  # dns-01 (RFC 8555 8.4) through the persistent CNAME delegation


def check_upstream_dcv(
    ctx: OrdersContext, product: Product, domains: Sequence[DomainRequest]
) -> None:
    """CNAME_CSR_HASH of an ACME product needs the delegation zone (`[dcv_delegation] zone`):
    without it no TXT value can be published, so the method is refused, naming what works."""
    if not product.issuer.is_acme or ctx.dcv_zone:
        return
    for position, domain in enumerate(domains):
        if domain.dcv_method == DNS01_METHOD:
            others = [m for m in product.dcv_methods if m != DNS01_METHOD]
            raise ApiError.invalid(
                f"domainInfo.{position}.dcvMethod",
                f"dcvMethod {DNS01_METHOD} is not available for product {product.code} (ACME): "
                "this service has no DNS delegation zone; use "
                f"{', '.join(others) if others else 'another product'}",
            )
