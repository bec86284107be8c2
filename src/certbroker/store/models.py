"""Tables (DESIGN.md "Data, in outline"). Money is integer cents; times are UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    ORMExecuteState,
    Session,
    mapped_column,
    relationship,
)


class UtcDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite keeps no zone, PostgreSQL would convert."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
    }


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    sandbox: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    # The sum of the account's ledger entries, kept by ledger.post in the same transaction:
    # place reads it instead of summing a ledger that grows with every order.
    balance_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # SHA-256 of the token: tokens are 256-bit random, so a fast hash is enough.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LedgerEntry(Base):
    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # topup | charge | refund
    # The operation that caused the entry: a retry of the same operation cannot post twice.
    op_key: Mapped[str] = mapped_column(String(120), unique=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    note: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime]


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("account_id", "ref_id", name="uq_orders_account_ref"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cert_id: Mapped[str] = mapped_column(String(32), unique=True)
    order_num: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    ref_id: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    product_code: Mapped[str] = mapped_column(String(100))
    validation_level: Mapped[str] = mapped_column(String(2))
    years: Mapped[int] = mapped_column(Integer)
    price_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    ov_status: Mapped[str] = mapped_column(String(16), default="notdone")
    ov_note: Mapped[str | None] = mapped_column(Text)
    sandbox: Mapped[bool] = mapped_column(Boolean, default=False)
    server: Mapped[str | None] = mapped_column(String(32))
    unique_value: Mapped[str | None] = mapped_column(String(20))
    csr_pem: Mapped[str] = mapped_column(Text)
    key_spec: Mapped[str | None] = mapped_column(String(16))
    # AES-GCM ciphertext of a key the platform generated (pki.secretbox), bound to cert_id.
    key_encrypted: Mapped[str | None] = mapped_column(Text)
    apply_params: Mapped[dict[str, Any]]
    trial_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    validation_deadline: Mapped[datetime]
    # Set when the order is ready for signing; the worker claims it with a lease.
    issue_due_at: Mapped[datetime | None] = mapped_column(index=True)
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    completed_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # Why the CA last refused to sign this order's certificate (collect's order-level lastError);
    # cleared when a certificate is issued.
    last_error: Mapped[str | None] = mapped_column(Text)
    parent_cert_id: Mapped[str | None] = mapped_column(String(32))
    # The purchase this order belongs to: itself, or the order it reissues/replaces.
    subscription_cert_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # When the worker reissues the next certificate of the subscription (lead time before end).
    renew_due_at: Mapped[datetime | None] = mapped_column(index=True)
    renewed_by_cert_id: Mapped[str | None] = mapped_column(String(32))
    # Days added to the subscription: carried over by renew, or originalfromOthers (SPEC 3.1).
    bonus_days: Mapped[int] = mapped_column(Integer, default=0)
    subscription_notice_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    # Optimistic lock (SQLAlchemy version_id_col): every ORM UPDATE of an order checks the
    # version it read, so a change based on a stale read (PostgreSQL READ COMMITTED, another
    # process changed the order meanwhile) fails instead of silently overwriting that change.
    version: Mapped[int] = mapped_column(Integer, default=1)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - read once, at mapping

    names: Mapped[list[OrderName]] = relationship(
        back_populates="order", order_by="OrderName.position", lazy="selectin"
    )


class OrderName(Base):
    __tablename__ = "order_names"
    __table_args__ = (
        UniqueConstraint("order_id", "name", name="uq_order_names_order_name"),
        Index("ix_order_names_due", "verified_at", "next_check_at"),
        # Validation reuse looks a name up across the account's orders (orders/reuse.py).
        Index("ix_order_names_name", "name"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    dcv_method: Mapped[str] = mapped_column(String(20))
    dcv_email: Mapped[str | None] = mapped_column(String(255))
    verified_at: Mapped[datetime | None]
    # Long enough for "EMAIL <approver address>" (an address may have 320 characters).
    verified_how: Mapped[str | None] = mapped_column(String(400))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_checked_at: Mapped[datetime | None]
    last_result: Mapped[str | None] = mapped_column(Text)
    next_check_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))

    order: Mapped[Order] = relationship(back_populates="names")


class Certificate(Base):
    __tablename__ = "certificates"
    __table_args__ = (UniqueConstraint("order_id", "generation", name="uq_certificates_gen"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    # 1 for the first certificate of an order; automatic reissues add more.
    generation: Mapped[int] = mapped_column(Integer)
    serial_hex: Mapped[str] = mapped_column(String(40), unique=True)
    issuer: Mapped[str] = mapped_column(String(16))  # production | sandbox
    # Boulder's issuance cycle: the row exists ("signing") before the signature does.
    state: Mapped[str] = mapped_column(String(16))  # signing | issued | abandoned
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    pem: Mapped[str | None] = mapped_column(Text)
    chain_pem: Mapped[str | None] = mapped_column(Text)
    # PKCS#12 and JKS with their passwords, encrypted (they hold the private key).
    bundles_encrypted: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    issued_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revocation_reason: Mapped[int | None] = mapped_column(Integer)


class Event(Base):
    """The outbox: one row per state change, delivered later (webhooks, e-mail)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    # Webhooks (notify/webhooks.py): None until the worker looks at the event for a configured
    # webhook; then "queued" (a webhook_deliveries row exists) or "skipped" (before set-up).
    webhook_state: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_events_webhook", "account_id", "webhook_state"),)


class OutgoingMail(Base):
    """The mail outbox (DESIGN.md: mails are sent from the outbox by the worker, never inline).

    The body may hold secrets (approval links), so it is stored encrypted (pki.secretbox, context
    `mail:<id>`) and cleared once the message is sent or abandoned.
    """

    __tablename__ = "mail_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # queued | sent | failed | cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    # Due time of the next attempt; None once the mail is sent, failed or cancelled.
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    send_until: Mapped[datetime]  # give up after this (e.g. the approval link expires)
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]


class DcvEmailApproval(Base):
    """One approver e-mail for one order name (BR 3.2.2.4.4). Only SHA-256 hashes of its Random
    Value (the link token) and of its code are kept."""

    __tablename__ = "dcv_email_approvals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_name_id: Mapped[int] = mapped_column(ForeignKey("order_names.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    mail_id: Mapped[int | None] = mapped_column(ForeignKey("mail_outbox.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    failed_code_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None]  # too many wrong codes
    used_at: Mapped[datetime | None]  # the approval was given (single use)
    revoked_at: Mapped[datetime | None]  # superseded by a resend


class AuditEntry(Base):
    """Append-only record of every state-changing API call, failed ones included.

    Rows are only ever inserted (orders/audit.py); the listeners below refuse ORM updates and
    deletes, so no code path can rewrite history."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    # None when the call failed before its token was recognised.
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    source_address: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))  # the endpoint, e.g. "place"
    cert_id: Mapped[str | None] = mapped_column(String(64), index=True)
    code: Mapped[int] = mapped_column(Integer)  # the envelope code answered


class AppendOnlyError(RuntimeError):
    pass


@event.listens_for(AuditEntry, "before_update")
@event.listens_for(AuditEntry, "before_delete")
def _audit_rows_are_final(_mapper: Any, _connection: Any, _target: AuditEntry) -> None:
    raise AppendOnlyError("audit_log is append-only: rows are never updated or deleted")


@event.listens_for(Session, "do_orm_execute")
def _no_bulk_audit_changes(state: ORMExecuteState) -> None:
    table = getattr(state.statement, "table", None)
    if (state.is_update or state.is_delete) and getattr(table, "name", None) == "audit_log":
        raise AppendOnlyError("audit_log is append-only: rows are never updated or deleted")


class WebhookEndpoint(Base):
    """An account's webhook (notify/webhooks.py). The signing secret is stored encrypted
    (pki.secretbox, context `webhook:<account id>`)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret_encrypted: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event to deliver to its account's webhook: a work row with a due time and a lease."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed | cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    give_up_at: Mapped[datetime]
    # Due time of the next attempt; None once delivered, failed or cancelled.
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    last_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt, readable by the reseller."""

    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    attempted_at: Mapped[datetime]
    url: Mapped[str] = mapped_column(String(2048))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class RevocationList(Base):
    """The current CRL of each CA (RFC 5280 5, BR 7.2), kept in the database so that every
    process serves the same one; orders/revocation_lists.py rebuilds it in place."""

    __tablename__ = "crls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ca: Mapped[str] = mapped_column(String(16), unique=True)  # production | sandbox | root | ...
    number: Mapped[int] = mapped_column(BigInteger)  # cRLNumber, strictly increasing (BR 7.2.2)
    this_update: Mapped[datetime]
    next_update: Mapped[datetime]
    # SHA-256 over the listed (serial, time, reason) entries: a change means a new CRL is due.
    entries_digest: Mapped[str] = mapped_column(String(64))
    entries: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary)


# The CRL refresh reads the revoked certificates on every worker pass: only those, not the table.
Index("ix_certificates_revoked", Certificate.revoked_at)


class CompromisedKey(Base):
    """A public key never to be certified again (BR 6.1.1.3): revoked for keyCompromise in any
    account, or added by the operator (`certbroker policy block-key`)."""

    __tablename__ = "compromised_keys"
    # Hex SHA-256 of the DER SubjectPublicKeyInfo (policy.keys.spki_sha256).
    spki_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # revocation | operator
    # The certificate revoked for keyCompromise (revocation), or the operator's note.
    note: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class UpstreamAccount(Base):
    """Our account at an upstream ACME CA (RFC 8555 7.3). The key is encrypted at rest
    (pki.secretbox, context `upstream-account:<upstream>`)."""

    __tablename__ = "upstream_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upstream: Mapped[str] = mapped_column(String(40), unique=True)
    account_url: Mapped[str | None] = mapped_column(String(2048))
    key_encrypted: Mapped[str] = mapped_column(Text)
    thumbprint: Mapped[str] = mapped_column(String(64))
    eab_kid: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16))  # valid | failed
    last_problem: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    checked_at: Mapped[datetime | None]


class UpstreamOrder(Base):
    """One ACME order (RFC 8555 7.1.3) placed upstream for an order: a work row with a due time
    and a lease. Each worker step re-reads the upstream object, takes one action and commits."""

    __tablename__ = "upstream_orders"
    __table_args__ = (UniqueConstraint("order_id", "attempt", name="uq_upstream_orders_attempt"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    upstream: Mapped[str] = mapped_column(String(40))
    account_url: Mapped[str | None] = mapped_column(String(2048))
    # new | pending | ready | processing | valid | downloaded | invalid | failed
    status: Mapped[str] = mapped_column(String(16))
    order_url: Mapped[str | None] = mapped_column(String(2048))
    finalize_url: Mapped[str | None] = mapped_column(String(2048))
    certificate_url: Mapped[str | None] = mapped_column(String(2048))
    finalize_sent_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    # An automatic renewal: the ARI certID (RFC 9773 4.1) of the certificate it replaces,
    # sent as newOrder `replaces` when the upstream offers renewalInfo.
    replaces: Mapped[str | None] = mapped_column(String(255))
    last_problem: Mapped[str | None] = mapped_column(Text)
    # 5xx answers and time-outs in a row (the back-off's exponent; 0 after any success).
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Due time of the next step; None once downloaded or failed.
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))


class UpstreamAuthz(Base):
    """One authorization of an upstream order (RFC 8555 7.1.4) and its http-01 or dns-01
    challenge."""

    __tablename__ = "upstream_authzs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upstream_order_id: Mapped[int] = mapped_column(ForeignKey("upstream_orders.id"), index=True)
    order_name_id: Mapped[int | None] = mapped_column(ForeignKey("order_names.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    identifier: Mapped[str] = mapped_column(String(255))
    wildcard: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # pending | valid | invalid | ...
    expires_at: Mapped[datetime | None]
    challenge_type: Mapped[str | None] = mapped_column(String(32))
    challenge_url: Mapped[str | None] = mapped_column(String(2048))
    token: Mapped[str | None] = mapped_column(String(255))
    # The value shown to the customer (http-01: the key authorization, RFC 8555 8.1).
    key_authorization: Mapped[str | None] = mapped_column(String(512))
    # dns-01 through the delegation: the TXT owner `<label>.<zone>` (lower case, no final dot)
    # where this authz's value is published (RFC 8555 8.4); None for http-01.
    txt_fqdn: Mapped[str | None] = mapped_column(String(253), index=True)
    prechecked_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    last_problem: Mapped[str | None] = mapped_column(Text)


class DnsDelegation(Base):
    """An account's persistent dns-01 delegation for a base domain: the customer's
    `_acme-challenge.<base_domain>` CNAME points to `<label>.<delegation zone>.` once, for
    every order after (docs/DNS-DELEGATION.md). The label is made once and never recomputed."""

    __tablename__ = "dns_delegations"
    __table_args__ = (UniqueConstraint("account_id", "base_domain"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    base_domain: Mapped[str] = mapped_column(String(253))  # lower case, no `*.`, no final dot
    label: Mapped[str] = mapped_column(String(26), unique=True)
    created_at: Mapped[datetime]


class DnsTxt(Base):
    """A TXT value published in the delegation zone (RFC 8555 8.4: one row per value), served
    by the built-in DNS server until `expires_at`."""

    __tablename__ = "dns_txt"
    __table_args__ = (UniqueConstraint("fqdn", "value"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fqdn: Mapped[str] = mapped_column(String(253), index=True)  # lower case, no final dot
    value: Mapped[str] = mapped_column(String(255))  # one character-string (RFC 1035 3.3.14)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime]
