"""After issuance: reissue (SPEC 4.6), replace (4.7) and revoke (4.16).

reissue and replace create a new certId inside the same purchase: free, same dueDate, the old
certId becomes REISSUED. Validation of names the account already proved is reused (BR 4.2.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from certbroker.issuance.acme_upstream import ari_cert_id
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.csr_policy import (
    OrderKey,
    check_customer_csr,
    generate_order_key,
    requested_names,
    require_certifiable_key,
)
from certbroker.orders.dcv import mark_ready_if_complete
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.events import record_event
from certbroker.orders.ids import new_cert_id
from certbroker.orders.params import (
    DomainRequest,
    OrderParams,
    decode_params,
    parse_order_params,
)
from certbroker.orders.reuse import apply_reuse
from certbroker.orders.states import Operation, Status, require_allowed
from certbroker.orders.upstream_orders import (
    INSERT_UPSTREAM_ORDER,
    ensure_delegations,
    new_upstream_order,
)
from certbroker.orders.upstream_revocation import (
    require_revoked_upstream,
    revoke_upstream,
    upstream_certificates,
)
from certbroker.orders.upstream_rules import check_upstream_dcv, check_upstream_order
from certbroker.orders.views import load_order
from certbroker.pki.csr import CsrError, parse_csr
from certbroker.pki.keys import private_key_to_pem
from certbroker.policy.keys import spki_sha256
from certbroker.store import compromised_keys
from certbroker.store.models import Certificate, Order, OrderName

KEY_COMPROMISE = 1  # RFC 5280 5.3.1
# RFC 5280 5.3.1 CRLReason values a subscriber may ask for (BR 7.2.2: keyCompromise,
# affiliationChanged, superseded, cessationOfOperation, or none = unspecified).
SUBSCRIBER_REASONS = {
    "unspecified": 0,
    "keyCompromise": KEY_COMPROMISE,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}
_REASON_LOOKUP = {name.lower(): code for name, code in SUBSCRIBER_REASONS.items()}
# RFC 5280 reasons a subscriber may not give: named, they are refused, not taken as free text.
_OTHER_RFC_REASONS = frozenset(
    {"cacompromise", "certificatehold", "removefromcrl", "privilegewithdrawn", "aacompromise"}
)
DEFAULT_REISSUE_REASON = "reissue requested"
MAX_NOTE_CHARS = 200


@dataclass(frozen=True)
class Successor:
    """What a reissue/replace changes; everything else is copied from the old order."""

    key: OrderKey
    domains: tuple[DomainRequest, ...]
    apply_params: dict[str, Any]
    unique_value: str | None
    ov_status: str
    server: str | None


def _ref_id(raw: object) -> str | None:
    text = str(raw).strip() if raw is not None else ""
    if len(text) > 128:
        raise ApiError(Code.INVALID, {"refId": ["refId is longer than 128 characters"]})
    return text or None


def _unique_value(raw: object, current: str | None) -> str | None:
    if raw is None or not str(raw).strip():
        return current
    text = str(raw).strip()
    if not (1 <= len(text) <= 20 and text.isascii() and text.isalnum()):
        raise ApiError.invalid("uniqueValue", "uniqueValue must be 1-20 characters a-z, A-Z, 0-9")
    return text


def _create_successor(
    ctx: OrdersContext,
    session: Session,
    old: Order,
    change: Successor,
    ref_id: str | None,
    kind: str,
    reason: str,
    replaces: str | None = None,
) -> Order:
    now = ctx.clock.now()
    cert_id = new_cert_id(now)
    order = Order(
        cert_id=cert_id,
        order_num=old.order_num,
        account_id=old.account_id,
        ref_id=ref_id,
        request_hash=f"{kind}:{old.cert_id}",
        product_code=old.product_code,
        validation_level=old.validation_level,
        years=old.years,
        price_cents=old.price_cents,
        status=Status.PENDING,
        ov_status=change.ov_status,
        sandbox=old.sandbox,
        server=change.server,
        unique_value=change.unique_value,
        csr_pem=change.key.csr.pem,
        key_spec=change.key.key_spec,
        apply_params=change.apply_params,
        trial_days=old.trial_days,
        created_at=now,
        updated_at=now,
        validation_deadline=now + ctx.policy.dcv_window,
        due_at=old.due_at,
        parent_cert_id=old.cert_id,
        subscription_cert_id=old.subscription_cert_id or old.cert_id,
        bonus_days=old.bonus_days,
        completed_at=None,
    )
    session.add(order)
    session.flush()
    # An upstream ACME product's successor is a new upstream order (orders/upstream_orders.py):
    # the upstream validates again (http-01: a new token to publish; dns-01: the persistent
    # CNAME covers it, nothing for the customer to do); our own validations never count there.
    product = ctx.catalog.get(old.product_code)
    upstream = product.issuer.upstream if product and product.issuer.is_acme else None
    if old.sandbox:
        upstream = None
    if change.key.private_key is not None:
        order.key_encrypted = ctx.box.encrypt(
            private_key_to_pem(change.key.private_key).encode("ascii"),
            context=cert_id.encode("ascii"),
        )
    elif change.key.csr.pem == old.csr_pem and old.key_encrypted is not None:
        # Same CSR, same key: carry the held key over (re-encrypted for the new certId).
        key_pem = ctx.box.decrypt(old.key_encrypted, context=old.cert_id.encode("ascii"))
        order.key_encrypted = ctx.box.encrypt(key_pem, context=cert_id.encode("ascii"))
    for position, domain in enumerate(change.domains):
        row = OrderName(
            order_id=order.id,
            position=position,
            name=domain.name,
            dcv_method=domain.dcv_method,
            dcv_email=domain.dcv_email,
            attempts=0,
            next_check_at=now,
        )
        if old.sandbox:
            row.verified_at, row.verified_how, row.next_check_at = now, "sandbox", None
        elif upstream is not None:
            # Checked by the upstream steps, not by the DCV checker.
            row.next_check_at, row.last_result = None, "waiting for the upstream order"
        else:
            apply_reuse(session, old.account_id, row, now)
        session.add(row)
        order.names.append(row)
    if upstream is not None:
        session.execute(
            INSERT_UPSTREAM_ORDER,
            dict(new_upstream_order(order.id, upstream, now), replaces=replaces),
        )
        ensure_delegations(ctx, session, old.account_id, change.domains, now)
    old.status = Status.REISSUED
    old.renew_due_at = None
    old.updated_at = now
    record_event(
        session,
        old,
        "certificate.reissued",
        {"newCertId": cert_id, "kind": kind, "reason": reason},
        now,
    )
    record_event(session, order, "order.placed", {kind + "Of": old.cert_id}, now)
    mark_ready_if_complete(order, now)
    return order


def renew_upstream(ctx: OrdersContext, session: Session, old: Order) -> Order | None:
    """A subscription's automatic reissue of an upstream ACME certificate (the caller holds
    the row lock and found it due): a successor order with the same CSR, hence the same key, as
    a `reissue` without a CSR makes, free; its upstream order carries RFC 9773 `replaces` = the
    ARI certID of the current certificate. dns-01 through the CNAME completes without the
    customer; http-01 shows a new token in the successor's collect. None: not an upstream
    product (the built-in path reissues in place)."""
    product = ctx.catalog.get(old.product_code)
    if product is None or not product.issuer.is_acme or old.sandbox:
        return None
    current = session.scalar(
        select(Certificate)
        .where(
            Certificate.order_id == old.id,
            Certificate.state == "issued",
            Certificate.revoked_at.is_(None),
        )
        .order_by(Certificate.generation.desc())
        .limit(1)
    )
    replaces = None
    if current is not None and current.pem:
        try:
            replaces = ari_cert_id(x509.load_pem_x509_certificate(current.pem.encode("ascii")))
        except ValueError:
            replaces = None  # no AKI keyIdentifier: a plain new order
    key = OrderKey(csr=parse_csr(old.csr_pem), private_key=None, generated=False, key_spec=None)
    change = Successor(
        key=key,
        domains=_names_of(old),
        apply_params=dict(old.apply_params),
        unique_value=old.unique_value,
        ov_status="done",
        server=old.server,
    )
    return _create_successor(
        ctx, session, old, change, None, "renew", "subscription renewal", replaces=replaces
    )


def _by_ref(session: Session, old: Order, ref_id: str | None, kind: str) -> Order | None:
    """A retried reissue/replace with the same refId answers the order it created."""
    if ref_id is None:
        return None
    existing = session.scalar(
        select(Order).where(Order.account_id == old.account_id, Order.ref_id == ref_id)
    )
    if existing is None:
        return None
    if existing.request_hash != f"{kind}:{old.cert_id}":
        raise ApiError.invalid("refId", f"refId {ref_id} was already used for {existing.cert_id}")
    return existing


def _names_of(old: Order) -> tuple[DomainRequest, ...]:
    return tuple(
        DomainRequest(name=n.name, dcv_method=n.dcv_method, dcv_email=n.dcv_email)
        for n in old.names
    )


def reissue(
    ctx: OrdersContext,
    account: AccountRef,
    cert_id: object,
    reason: object,
    unique_value: object,
    ref_id_raw: object,
    csr: object,
) -> Order:
    """A new certificate for the same names: new key unless a CSR is sent, no charge."""
    # Clients send no reason: the SPEC's required field gets a documented default.
    reason_text = (str(reason).strip() if reason is not None else "") or DEFAULT_REISSUE_REASON
    ref_id = _ref_id(ref_id_raw)
    with ctx.db.transaction() as session:
        old = load_order(session, account, cert_id)
        again = _by_ref(session, old, ref_id, "reissue")
        if again is not None:
            return again
        require_allowed(Operation.REISSUE, old.status)
        names = [n.name for n in old.names]
        old_csr, old_key_spec, old_holds_key = old.csr_pem, old.key_spec, bool(old.key_encrypted)
        product_code = old.product_code
    if isinstance(csr, str) and csr.strip():
        params = OrderParams(
            csr=csr,
            private_key=None,
            server=None,
            unique_value=None,
            domains=(),
            organization=None,
            administrator=None,
            tech=None,
            finance=None,
            original_from_others=False,
            key_spec=None,
        )
        key = check_customer_csr(ctx, params, names)
        product = ctx.catalog.get(product_code)
        if product is not None:
            check_upstream_order(ctx, product, key, names)  # RFC 8555 7.4: SANs = names
    elif old_holds_key:
        # The platform held the key: a reissue is the moment to replace it.
        key = generate_order_key(
            names, old_key_spec or ctx.policy.default_key_spec, keys=ctx.key_pool
        )
    else:
        try:
            key = OrderKey(csr=parse_csr(old_csr), private_key=None, generated=False, key_spec=None)
        except CsrError as exc:  # pragma: no cover - stored CSRs were checked at place
            raise ApiError(Code.UNEXPECTED, str(exc)) from exc
        # The customer's key again: it may have been revoked for keyCompromise since.
        require_certifiable_key(ctx, key.csr.public_key, "csr")
    try:
        with ctx.db.transaction() as session:
            old = load_order(session, account, cert_id, lock=True)
            again = _by_ref(session, old, ref_id, "reissue")
            if again is not None:
                return again
            require_allowed(Operation.REISSUE, old.status)
            apply_params = dict(old.apply_params, csr=key.csr.pem)
            unique = _unique_value(unique_value, old.unique_value)
            if unique:
                apply_params["uniqueValue"] = unique
            change = Successor(
                key=key,
                domains=_names_of(old),
                apply_params=apply_params,
                unique_value=unique,
                ov_status="done",
                server=old.server,
            )
            return _create_successor(ctx, session, old, change, ref_id, "reissue", reason_text)
    except IntegrityError:
        with ctx.db.transaction() as session:
            old = load_order(session, account, cert_id)
            again = _by_ref(session, old, ref_id, "reissue")
        if again is None:
            raise
        return again


def replace(
    ctx: OrdersContext, account: AccountRef, cert_id: object, ref_id_raw: object, raw_params: object
) -> Order:
    """New CSR, names and company data under the product's rules (SPEC 4.7); no charge, so the
    replacement may not cover more than the purchase paid for."""
    ref_id = _ref_id(ref_id_raw)
    params_dict = decode_params(raw_params)
    with ctx.db.transaction() as session:
        old = load_order(session, account, cert_id, lock=True)
        again = _by_ref(session, old, ref_id, "replace")
        if again is not None:
            return again
        require_allowed(Operation.REPLACE, old.status)
        product = ctx.catalog.require(old.product_code)
        old_params = dict(old.apply_params)
        params = parse_order_params(params_dict, product, replace=True, names=ctx.policy.names)
        names = requested_names(params)
        price = ctx.catalog.price_cents(product, old.years, names)
        if price > old.price_cents:
            raise ApiError.invalid(
                "domainInfo",
                f"the new names cost more than {old.cert_id} paid for; order the "
                "extra names separately",
            )
        key = check_customer_csr(ctx, params, names, session)
        check_upstream_order(ctx, product, key, names)
        check_upstream_dcv(ctx, product, params.domains)
        apply_params = params.to_apply_params()
        for kept in ("server", "organizationInfo", "Administrator", "tech", "finance"):
            if not apply_params.get(kept) and old_params.get(kept):
                apply_params[kept] = old_params[kept]
        apply_params["csr"] = key.csr.pem
        new_org = params.organization is not None and old.validation_level != "dv"
        change = Successor(
            key=key,
            domains=params.domains,
            apply_params=apply_params,
            unique_value=params.unique_value or old.unique_value,
            # New company data must be vetted again before it appears in a certificate.
            ov_status="processing" if new_org else "done",
            server=params.server or old.server,
        )
        return _create_successor(ctx, session, old, change, ref_id, "replace", "replace")


def parse_reason(raw: object) -> tuple[int, str | None]:
    """The RFC 5280 reason code, and the client's text when it was no reason name or number.

    Clients send a free-text reason as they do for cancel ("Customer requested revocation"):
    that is `unspecified` (0), the text kept as the note. Another RFC 5280 reason, by name or
    number, is still refused: it names a reason, just not one a subscriber may give."""
    if raw is None or not str(raw).strip():
        return 0, None
    text = str(raw).strip()
    key = text.replace("_", "").replace(" ", "").lower()
    if key in _REASON_LOOKUP:
        return _REASON_LOOKUP[key], None
    if text.isdigit() or key in _OTHER_RFC_REASONS:
        if text.isdigit() and int(text) in SUBSCRIBER_REASONS.values():
            return int(text), None
        allowed = ", ".join(f"{name} ({code})" for name, code in SUBSCRIBER_REASONS.items())
        raise ApiError.invalid(
            "reason",
            f"reason {text[:40]} is not a revocation reason a subscriber "
            f"may give (BR 7.2.2); use one of {allowed}",
        )
    return 0, text[:MAX_NOTE_CHARS]


def revoke_certificates(
    session: Session, order: Order, reason: int, now: datetime, upstream_done: set[int]
) -> int:
    """Mark the order's certificates revoked; `upstream_done`: the upstream certificates this
    call revoked at their CA (orders/upstream_revocation.py)."""
    rows = session.scalars(
        select(Certificate).where(
            Certificate.order_id == order.id,
            Certificate.state == "issued",
            Certificate.revoked_at.is_(None),
        )
    ).all()
    require_revoked_upstream(rows, upstream_done)
    for cert in rows:
        cert.revoked_at = now
        cert.revocation_reason = reason
        if reason == KEY_COMPROMISE and cert.pem:
            # BR 6.1.1.3: the key is refused for every later order, in every account.
            public_key = x509.load_pem_x509_certificate(cert.pem.encode("ascii")).public_key()
            compromised_keys.add(
                session,
                spki_sha256(public_key),
                source="revocation",
                note=f"{order.cert_id} serial {cert.serial_hex} revoked for keyCompromise",
                now=now,
            )
    return len(rows)


def revoke(ctx: OrdersContext, account: AccountRef, cert_id: object, reason: object) -> None:
    now = ctx.clock.now()
    with ctx.db.read() as session:
        order = load_order(session, account, cert_id)
        require_allowed(Operation.REVOKE, order.status)
        code, note = parse_reason(reason)
        upstream = upstream_certificates(session, [order.id])
    done = revoke_upstream(ctx, upstream, code)  # the upstream first, outside the transaction
    with ctx.db.transaction() as session:
        order = load_order(session, account, cert_id, lock=True)
        require_allowed(Operation.REVOKE, order.status)
        count = revoke_certificates(session, order, code, now, done)
        order.status = Status.REVOKED
        order.renew_due_at = None
        order.issue_due_at = None
        order.updated_at = now
        payload: dict[str, Any] = {"reason": code, "certificates": count}
        if note is not None:
            payload["note"] = note
        record_event(session, order, "certificate.revoked", payload, now)
    publish_revocations(ctx)


def publish_revocations(ctx: OrdersContext) -> None:
    """Refresh the CRLs now, so relying parties see a revocation at once (OCSP reads the table)."""
    try:
        from certbroker.orders.revocation_lists import refresh_crls
    except ImportError:  # pragma: no cover - CRLs not built in this tree
        return
    refresh_crls(ctx, force=True)
