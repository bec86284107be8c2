"""Approver e-mail DCV (BR 3.2.2.4.4, "Constructed Email to Domain Contact").

The first check of a pending EMAIL name queues one message to its approver address with a
Random Value (a 256-bit token in a link) and an 8-digit code; opening the link and confirming, or
entering the code, validates the name. Rules:
- Only SHA-256 hashes of the token and code are stored; the message body waits in the mail
  outbox encrypted (context `mail:<id>`) and is erased once sent or abandoned.
- An approval lives 7 days (BR 3.2.2.4.4 allows at most 30 for a Random Value) and is single
  use. Ignoring the mail is how an approver refuses, so an expired approval is not re-sent
  unasked: the reseller asks with `resend` (DCVemail with a certId), which also revokes the old
  link and code.
- Five wrong codes lock the approval (an 8-digit code alone is guessable; the link is not).
- Delivery is at-least-once: a crash between sending and recording may repeat the unchanged
  message, which BR 3.2.2.4.4 allows ("re-sent in its entirety").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from enum import StrEnum
from typing import Final
from urllib.parse import urlencode, urlsplit

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from certbroker.notify import smtp
from certbroker.notify.messages import (
    ApprovalRequest,
    approval_body,
    approval_subject,
    build_message,
)
from certbroker.orders import dcv
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError
from certbroker.orders.events import record_event
from certbroker.orders.params import parse_dcv_choice
from certbroker.orders.states import VALIDATING, Operation, require_allowed
from certbroker.orders.views import load_order
from certbroker.pki.names import NameSyntaxError, normalize_name
from certbroker.pki.secretbox import SecretBoxError
from certbroker.store.db import lock_row
from certbroker.store.models import DcvEmailApproval, Order, OrderName, OutgoingMail
from certbroker.validation.results import CheckResult

log = structlog.get_logger("certbroker.email_dcv")

APPROVAL_LIFETIME: Final = timedelta(days=7)
MAX_CODE_ATTEMPTS: Final = 5
MAIL_RETRY: Final = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
)
MAIL_BATCH: Final = 20
SMTP_TIMEOUT_SECONDS: Final = 10.0
KIND_APPROVAL: Final = "dcv.approval"

_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_CODE_SHAPE: Final = re.compile(r"[0-9]{8}")


def _utc(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


def _hash_token(token: str) -> str:
    # 256-bit random: a fast hash is enough (like API tokens).
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _hash_code(name_id: int, code: str) -> str:
    return hashlib.sha256(f"dcv-code:{name_id}:{code}".encode("ascii")).hexdigest()


def _mail_context(mail_id: int) -> bytes:
    return f"mail:{mail_id}".encode("ascii")


def _lock_name(session: Session, name_id: int) -> tuple[Order | None, OrderName | None]:
    """Lock the name's order, then the name: the lock order of orders/dcv.py, followed by every
    approval and mail change here (then approval rows, then mail rows), so none can deadlock."""
    order_id = session.scalar(select(OrderName.order_id).where(OrderName.id == name_id))
    if order_id is None:
        return None, None
    return lock_row(session, Order, order_id), lock_row(session, OrderName, name_id)


# --- issuing approvals -------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalSent:
    cert_id: str
    domain: str
    email: str
    expires_at: datetime


def _current_approval(session: Session, row: OrderName) -> DcvEmailApproval | None:
    """The newest approval of the name for its present address that a resend has not replaced."""
    return session.scalars(
        select(DcvEmailApproval)
        .where(
            DcvEmailApproval.order_name_id == row.id,
            DcvEmailApproval.recipient == (row.dcv_email or ""),
            DcvEmailApproval.revoked_at.is_(None),
        )
        .order_by(DcvEmailApproval.id.desc())
        .limit(1)
        .with_for_update()
    ).first()


def _queue_approval(
    ctx: OrdersContext, session: Session, order: Order, row: OrderName, now: datetime
) -> DcvEmailApproval:
    recipient = row.dcv_email or ""
    token = secrets.token_urlsafe(32)
    code = f"{secrets.randbelow(10**8):08d}"
    expires_at = now + APPROVAL_LIFETIME
    product = ctx.catalog.get(order.product_code)
    base = ctx.policy.public_url.rstrip("/")
    request = ApprovalRequest(
        domain=row.name,
        recipient=recipient,
        cert_id=order.cert_id,
        product_code=order.product_code,
        product_name=product.product_name if product else order.product_code,
        names=tuple(n.name for n in order.names),
        approve_url=f"{base}/dcv/approve/{token}",
        code_url=f"{base}/dcv/code?" + urlencode({"certId": order.cert_id, "domain": row.name}),
        code=code,
        random_value=token,
        expires_at=expires_at,
    )
    mail = OutgoingMail(
        kind=KIND_APPROVAL,
        order_id=order.id,
        recipient=recipient,
        subject=approval_subject(row.name),
        state="queued",
        attempts=0,
        created_at=now,
        next_attempt_at=now,
        send_until=expires_at,
    )
    session.add(mail)
    session.flush()
    mail.body_encrypted = ctx.box.encrypt(
        approval_body(request).encode("utf-8"), context=_mail_context(mail.id)
    )
    approval = DcvEmailApproval(
        order_name_id=row.id,
        recipient=recipient,
        token_hash=_hash_token(token),
        code_hash=_hash_code(row.id, code),
        mail_id=mail.id,
        created_at=now,
        expires_at=expires_at,
        failed_code_attempts=0,
    )
    session.add(approval)
    session.flush()
    log.info("approval e-mail queued", name_id=row.id, approval_id=approval.id, mail_id=mail.id)
    return approval


def _status(approval: DcvEmailApproval, mail: OutgoingMail | None, now: datetime) -> str:
    """What the reseller sees in collect while the name waits for its approver."""
    to = approval.recipient
    resend = "send a new one with DCVemail (certId, domainName)"
    if approval.locked_at is not None:
        return (
            f"approval e-mail to {to} locked at {_utc(approval.locked_at)} after "
            f"{approval.failed_code_attempts} wrong codes; {resend}"
        )
    if approval.expires_at <= now:
        return (
            f"approval e-mail to {to} expired at {_utc(approval.expires_at)} unanswered; {resend}"
        )
    if mail is None or mail.state == "failed":
        error = mail.last_error if mail is not None else "no message"
        return f"approval e-mail to {to} could not be delivered ({error}); {resend}"
    if mail.state == "sent" and mail.sent_at is not None:
        return (
            f"approval e-mail sent to {to} at {_utc(mail.sent_at)}; waiting for the approver "
            f"(link and code valid until {_utc(approval.expires_at)})"
        )
    if mail.attempts and mail.next_attempt_at is not None:
        return (
            f"approval e-mail to {to} not delivered yet (attempt {mail.attempts}: "
            f"{mail.last_error}); next attempt at {_utc(mail.next_attempt_at)}"
        )
    return f"approval e-mail to {to} queued at {_utc(mail.created_at)}; waiting for delivery"


def start_email_validation(ctx: OrdersContext, name_id: int) -> CheckResult:
    """The DCV engine's EMAIL check: queue the approval e-mail once, then report its state.

    Never passes by itself: the name is validated by the approver's answer (approve_by_token,
    approve_by_code), which marks it verified directly.
    """
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order, row = _lock_name(session, name_id)
        if row is None or order is None:
            return CheckResult(ok=False, detail="the name is no longer part of the order")
        if order.status not in VALIDATING:
            return CheckResult(ok=False, detail=f"the order is {order.status}")
        if row.dcv_method != "EMAIL":
            return CheckResult(ok=False, detail=f"{row.name} is validated by {row.dcv_method}")
        if not row.dcv_email:
            return CheckResult(
                ok=False, detail="no approver address (dcvEmail) is set; choose one with updateDCV"
            )
        approval = _current_approval(session, row)
        if approval is None:
            approval = _queue_approval(ctx, session, order, row, now)
        mail = session.get(OutgoingMail, approval.mail_id) if approval.mail_id else None
        return CheckResult(ok=False, detail=_status(approval, mail, now))


def _find_name(order: Order, raw: str | None) -> OrderName:
    if raw is None or not raw.strip():
        if len(order.names) == 1:
            return order.names[0]
        raise ApiError.invalid("domainName", "domainName is required for a multi-domain order")
    try:
        wanted = normalize_name(raw)
    except NameSyntaxError as exc:
        raise ApiError.invalid("domainName", str(exc)) from exc
    for row in order.names:
        if row.name == wanted:
            return row
    listed = ", ".join(n.name for n in order.names)
    raise ApiError.invalid("domainName", f"{wanted} is not a name of {order.cert_id} ({listed})")


def _revoke(session: Session, row: OrderName, now: datetime) -> None:
    """Retire every earlier approval of the name: its link and code stop working and a message
    still waiting in the outbox is dropped, secret body included."""
    approvals = session.scalars(
        select(DcvEmailApproval).where(
            DcvEmailApproval.order_name_id == row.id, DcvEmailApproval.revoked_at.is_(None)
        )
    ).all()
    for approval in approvals:
        approval.revoked_at = now
        if approval.mail_id is not None:
            session.execute(
                update(OutgoingMail)
                .where(OutgoingMail.id == approval.mail_id, OutgoingMail.state == "queued")
                .values(
                    state="cancelled",
                    body_encrypted=None,
                    next_attempt_at=None,
                    lease_owner=None,
                    lease_until=None,
                )
            )


def resend(
    ctx: OrdersContext,
    account: AccountRef,
    cert_id: object,
    domain_name: str | None,
    dcv_email: str | None,
) -> ApprovalSent:
    """DCVemail with a certId: a new approval e-mail (optionally to another approver address)
    replaces the previous one, whose link and code stop working."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        found = _find_name(load_order(session, account, cert_id), domain_name)
        order, row = _lock_name(session, found.id)
        if order is None or row is None:
            raise ApiError.invalid("domainName", f"{found.name} is no longer part of the order")
        require_allowed(Operation.UPDATE_DCV, order.status)
        if row.verified_at is not None:
            raise ApiError.invalid("domainName", f"{row.name} is already validated")
        if row.dcv_method != "EMAIL":
            raise ApiError.invalid(
                "domainName",
                f"{row.name} is validated by {row.dcv_method}, not EMAIL; switch it with "
                "updateDCV first",
            )
        if dcv_email is not None and dcv_email.strip():
            product = ctx.catalog.require(order.product_code)
            row.dcv_email = parse_dcv_choice(product, row.name, "EMAIL", dcv_email).dcv_email
        if not row.dcv_email:
            raise ApiError.invalid("dcvEmail", f"no approver address is set for {row.name}")
        _revoke(session, row, now)
        approval = _queue_approval(ctx, session, order, row, now)
        mail = session.get(OutgoingMail, approval.mail_id) if approval.mail_id else None
        row.last_result = _status(approval, mail, now)
        order.updated_at = now
        return ApprovalSent(
            cert_id=order.cert_id,
            domain=row.name,
            email=approval.recipient,
            expires_at=approval.expires_at,
        )


# --- the approver's answer ---------------------------------------------------------------------


class Refusal(StrEnum):
    """Why an answer was not accepted (the web pages map these to HTTP statuses)."""

    UNKNOWN = "unknown"  # no such link / no approval waiting: 404
    GONE = "gone"  # expired, used, replaced, locked, or nothing left to approve: 410
    BAD_INPUT = "bad_input"  # a form field missing or malformed: 400
    WRONG_CODE = "wrong_code"  # 400, counted


class ApprovalRefusedError(Exception):
    def __init__(self, kind: Refusal, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ApprovalView:
    """What the approval pages show: which domain, for which order, and its state."""

    domain: str
    recipient: str
    cert_id: str
    product_code: str
    product_name: str
    names: tuple[str, ...]
    expires_at: datetime
    approved_at: datetime | None


def _view(
    ctx: OrdersContext, approval: DcvEmailApproval, row: OrderName, order: Order
) -> ApprovalView:
    product = ctx.catalog.get(order.product_code)
    return ApprovalView(
        domain=row.name,
        recipient=approval.recipient,
        cert_id=order.cert_id,
        product_code=order.product_code,
        product_name=product.product_name if product else order.product_code,
        names=tuple(n.name for n in order.names),
        expires_at=approval.expires_at,
        approved_at=approval.used_at,
    )


def _usable(
    order: Order | None, row: OrderName | None, approval: DcvEmailApproval, now: datetime
) -> tuple[OrderName, Order]:
    """The name and order an approval may still validate; otherwise the reason it may not."""
    if row is None or order is None:
        raise ApprovalRefusedError(Refusal.GONE, "This request no longer exists.")
    if approval.used_at is not None:
        raise ApprovalRefusedError(
            Refusal.GONE, f"This approval was already given on {_utc(approval.used_at)}."
        )
    if approval.revoked_at is not None:
        raise ApprovalRefusedError(
            Refusal.GONE,
            "This approval was replaced by a newer e-mail; use the link or code in the latest "
            "message.",
        )
    if approval.locked_at is not None:
        raise ApprovalRefusedError(
            Refusal.GONE,
            "This approval is locked after too many wrong codes. Ask the certificate requester "
            "to send a new approval e-mail.",
        )
    if approval.expires_at <= now:
        raise ApprovalRefusedError(
            Refusal.GONE,
            f"This approval expired on {_utc(approval.expires_at)}. Ask the certificate "
            "requester to send a new approval e-mail.",
        )
    if order.status not in VALIDATING:
        raise ApprovalRefusedError(
            Refusal.GONE, f"Order {order.cert_id} is {order.status}; there is nothing to approve."
        )
    if row.verified_at is not None:
        raise ApprovalRefusedError(Refusal.GONE, f"{row.name} is already validated.")
    if row.dcv_method != "EMAIL" or row.dcv_email != approval.recipient:
        raise ApprovalRefusedError(
            Refusal.GONE,
            f"The requester changed how {row.name} is validated; this e-mail no longer applies.",
        )
    return row, order


def _by_token(
    session: Session, token: str, now: datetime
) -> tuple[DcvEmailApproval, OrderName, Order]:
    """The approval behind a link, locked (order, name, approval), and what it may validate."""
    if not _TOKEN_SHAPE.fullmatch(token):
        raise ApprovalRefusedError(Refusal.UNKNOWN, "This approval link is not valid.")
    found = session.execute(
        select(DcvEmailApproval.id, DcvEmailApproval.order_name_id).where(
            DcvEmailApproval.token_hash == _hash_token(token)
        )
    ).first()
    if found is None:
        raise ApprovalRefusedError(Refusal.UNKNOWN, "This approval link is not valid.")
    order, row = _lock_name(session, found.order_name_id)
    approval = lock_row(session, DcvEmailApproval, found.id)
    if approval is None:
        raise ApprovalRefusedError(Refusal.UNKNOWN, "This approval link is not valid.")
    row, order = _usable(order, row, approval, now)
    return approval, row, order


def describe_approval(ctx: OrdersContext, token: str) -> ApprovalView:
    """For the page behind the link: what would be approved. Changes nothing (mail scanners
    fetch links before people do)."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        approval, row, order = _by_token(session, token, now)
        return _view(ctx, approval, row, order)


def _approve(
    session: Session,
    approval: DcvEmailApproval,
    row: OrderName,
    order: Order,
    now: datetime,
    via: str,
) -> None:
    approval.used_at = now
    row.verified_at = now
    row.verified_how = f"EMAIL {approval.recipient}"
    row.last_checked_at = now
    row.last_result = f"approved by {approval.recipient} at {_utc(now)} ({via})"
    row.next_check_at = None
    row.lease_owner = None
    row.lease_until = None
    order.updated_at = now
    record_event(session, order, "domain.verified", {"domainName": row.name}, now)
    dcv.mark_ready_if_complete(order, now)


def approve_by_token(ctx: OrdersContext, token: str) -> ApprovalView:
    """The confirming response through the link (its token is the Random Value)."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        approval, row, order = _by_token(session, token, now)
        _approve(session, approval, row, order, now, "link")
        view = _view(ctx, approval, row, order)
    log.info("domain approved by e-mail", name_id=row.id, approval_id=approval.id, via="link")
    return view


def approve_by_code(ctx: OrdersContext, cert_id: str, domain: str, code: str) -> ApprovalView:
    """The confirming response through the code form; wrong codes are counted and lock the
    approval at MAX_CODE_ATTEMPTS."""
    cert_id = cert_id.strip()
    code = re.sub(r"[\s-]", "", code)
    if not cert_id or not domain.strip():
        raise ApprovalRefusedError(
            Refusal.BAD_INPUT, "Enter the order, the domain and the code from the e-mail."
        )
    if not _CODE_SHAPE.fullmatch(code):
        raise ApprovalRefusedError(Refusal.BAD_INPUT, "The code has 8 digits.")
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        name_id = _name_for_code(session, cert_id[:32], domain)
        order, row = _lock_name(session, name_id) if name_id is not None else (None, None)
        approval = _current_approval(session, row) if row is not None else None
        if approval is None:
            raise ApprovalRefusedError(
                Refusal.UNKNOWN, "No approval is waiting for this order and domain."
            )
        row, order = _usable(order, row, approval, now)
        approval_id = approval.id
        if hmac.compare_digest(approval.code_hash, _hash_code(row.id, code)):
            _approve(session, approval, row, order, now, "code")
            outcome: ApprovalView | ApprovalRefusedError = _view(ctx, approval, row, order)
        else:
            outcome = _count_wrong_code(approval, now)
    # Outside the transaction: a wrong attempt is committed before the refusal is raised.
    if isinstance(outcome, ApprovalRefusedError):
        log.warning("wrong approval code", approval_id=approval_id, kind=outcome.kind.value)
        raise outcome
    log.info("domain approved by e-mail", name_id=row.id, approval_id=approval_id, via="code")
    return outcome


def _count_wrong_code(approval: DcvEmailApproval, now: datetime) -> ApprovalRefusedError:
    approval.failed_code_attempts += 1
    left = MAX_CODE_ATTEMPTS - approval.failed_code_attempts
    if left > 0:
        return ApprovalRefusedError(
            Refusal.WRONG_CODE, f"Wrong code; {left} attempt{'s' if left > 1 else ''} left."
        )
    approval.locked_at = now
    return ApprovalRefusedError(
        Refusal.GONE,
        "Wrong code. This approval is now locked after too many wrong codes; ask the "
        "certificate requester to send a new approval e-mail.",
    )


def _name_for_code(session: Session, cert_id: str, domain: str) -> int | None:
    try:
        name = normalize_name(domain[:300])
    except NameSyntaxError:
        return None
    return session.scalar(
        select(OrderName.id)
        .join(Order, Order.id == OrderName.order_id)
        .where(Order.cert_id == cert_id, OrderName.name == name)
    )


# --- the mail outbox ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claimed:
    mail_id: int
    message: EmailMessage


def _server(ctx: OrdersContext) -> smtp.SmtpServer:
    policy = ctx.policy
    return smtp.SmtpServer(
        host=policy.smtp_host,
        port=policy.smtp_port,
        helo_name=urlsplit(policy.public_url).hostname or "localhost",
        timeout=SMTP_TIMEOUT_SECONDS,
    )


def _finish(mail: OutgoingMail, state: str, error: str | None) -> None:
    mail.state = state
    mail.body_encrypted = None  # the secret link and code leave the database with the message
    mail.next_attempt_at = None
    mail.lease_owner = None
    mail.lease_until = None
    if error is not None:
        mail.last_error = error


def _approval_of(session: Session, mail_id: int) -> DcvEmailApproval | None:
    return session.scalars(
        select(DcvEmailApproval).where(DcvEmailApproval.mail_id == mail_id)
    ).first()


def _still_wanted(session: Session, mail: OutgoingMail) -> bool:
    """An approval mail whose approval was replaced or answered, or whose order is no longer
    being validated, is dropped rather than sent."""
    if mail.kind != KIND_APPROVAL:
        return True
    approval = _approval_of(session, mail.id)
    if approval is None or approval.revoked_at is not None or approval.used_at is not None:
        return False
    order = session.get(Order, mail.order_id) if mail.order_id is not None else None
    return order is not None and order.status in VALIDATING


def _claim(ctx: OrdersContext, owner: str) -> tuple[_Claimed | None, list[int]]:
    """Lease the next due mail and decrypt it. Also returns the ids of mails given up on the
    way (too late, undecryptable), whose names then need a new last result."""
    now = ctx.clock.now()
    given_up: list[int] = []
    with ctx.db.transaction() as session:
        while True:
            mail = session.scalars(
                select(OutgoingMail)
                .where(
                    OutgoingMail.state == "queued",
                    OutgoingMail.next_attempt_at.is_not(None),
                    OutgoingMail.next_attempt_at <= now,
                    (OutgoingMail.lease_until.is_(None)) | (OutgoingMail.lease_until < now),
                )
                .order_by(OutgoingMail.next_attempt_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if mail is None:
                return None, given_up
            if not _still_wanted(session, mail):
                _finish(mail, "cancelled", None)
                continue
            if mail.send_until <= now or mail.body_encrypted is None:
                _finish(mail, "failed", f"not delivered in time (last error: {mail.last_error})")
                given_up.append(mail.id)
                continue
            try:
                body = ctx.box.decrypt(mail.body_encrypted, context=_mail_context(mail.id))
            except SecretBoxError:
                _finish(mail, "failed", "the stored message could not be decrypted")
                given_up.append(mail.id)
                continue
            mail.lease_owner = owner
            mail.lease_until = now + ctx.policy.lease
            message = build_message(
                sender=ctx.policy.smtp_from,
                recipient=mail.recipient,
                subject=mail.subject,
                body=body.decode("utf-8"),
                date=now,
            )
            return _Claimed(mail_id=mail.id, message=message), given_up


def _lock_mail(session: Session, mail_id: int) -> OutgoingMail | None:
    """Lock a mail after its approval's order and name (the lock order of _lock_name)."""
    approval = _approval_of(session, mail_id)
    if approval is not None:
        _lock_name(session, approval.order_name_id)
    return lock_row(session, OutgoingMail, mail_id)


def _note_on_name(session: Session, mail: OutgoingMail, now: datetime) -> None:
    """Keep the name's last result in step with its approval mail (collect shows it)."""
    approval = _approval_of(session, mail.id) if mail.kind == KIND_APPROVAL else None
    if approval is None or approval.revoked_at is not None:
        return
    row = session.get(OrderName, approval.order_name_id)
    if row is not None and row.verified_at is None and row.dcv_email == approval.recipient:
        row.last_result = _status(approval, mail, now)


def _record(ctx: OrdersContext, mail_id: int, error: smtp.MailDeliveryError | None) -> int:
    """Store an attempt's outcome: sent (body erased), retry later, or given up."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        mail = _lock_mail(session, mail_id)
        if mail is None or mail.state != "queued":
            return 0
        mail.attempts += 1
        if error is None:
            mail.sent_at = now
            mail.last_error = None
            _finish(mail, "sent", None)
        else:
            retry_at = now + MAIL_RETRY[min(mail.attempts, len(MAIL_RETRY)) - 1]
            if error.permanent or retry_at >= mail.send_until:
                _finish(mail, "failed", str(error)[:500])
            else:
                mail.last_error = str(error)[:500]
                mail.next_attempt_at = retry_at
                mail.lease_owner = None
                mail.lease_until = None
        _note_on_name(session, mail, now)
        return mail.attempts


def _note_given_up(ctx: OrdersContext, mail_ids: list[int]) -> None:
    now = ctx.clock.now()
    for mail_id in mail_ids:
        with ctx.db.transaction() as session:
            mail = _lock_mail(session, mail_id)
            if mail is not None:
                _note_on_name(session, mail, now)


def deliver_pending_mail(ctx: OrdersContext, owner: str) -> int:
    """Worker step: send due outbox mail, one leased row at a time, with back-off on failure.
    Returns how many messages were attempted."""
    server = _server(ctx)
    attempted = 0
    for _ in range(MAIL_BATCH):
        claimed, given_up = _claim(ctx, owner)
        _note_given_up(ctx, given_up)
        if claimed is None:
            break
        attempted += 1
        try:
            smtp.send(server, claimed.message)
        except smtp.MailDeliveryError as exc:
            attempt = _record(ctx, claimed.mail_id, exc)
            log.warning(
                "mail not delivered",
                mail_id=claimed.mail_id,
                attempt=attempt,
                permanent=exc.permanent,
                error=str(exc),
            )
            if exc.unreachable:
                break  # the server is down: the other messages wait for their next attempt
            continue
        _record(ctx, claimed.mail_id, None)
        log.info("mail sent", mail_id=claimed.mail_id, server=server.label)
    return attempted
