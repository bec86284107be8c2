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
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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
    parent_cert_id: Mapped[str | None] = mapped_column(String(32))

    names: Mapped[list[OrderName]] = relationship(
        back_populates="order", order_by="OrderName.position", lazy="selectin"
    )


class OrderName(Base):
    __tablename__ = "order_names"
    __table_args__ = (
        UniqueConstraint("order_id", "name", name="uq_order_names_order_name"),
        Index("ix_order_names_due", "verified_at", "next_check_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    dcv_method: Mapped[str] = mapped_column(String(20))
    dcv_email: Mapped[str | None] = mapped_column(String(255))
    verified_at: Mapped[datetime | None]
    verified_how: Mapped[str | None] = mapped_column(String(64))
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
