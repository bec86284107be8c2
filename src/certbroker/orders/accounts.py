"""Reseller accounts and API tokens (stored as hashes only)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.orders import ledger
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.ids import new_api_token
from certbroker.store.models import Account, ApiToken


@dataclass(frozen=True)
class AccountRef:
    id: int
    name: str
    sandbox: bool
    token_id: int | None = None


@dataclass(frozen=True)
class AccountSummary:
    id: int
    name: str
    sandbox: bool
    balance_cents: int
    active_tokens: int


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class UnknownAccountError(LookupError):
    pass


def create_account(session: Session, name: str, *, sandbox: bool, now: datetime) -> Account:
    if session.scalar(select(Account).where(Account.name == name)) is not None:
        raise ValueError(f"an account named {name!r} exists already")
    account = Account(name=name, sandbox=sandbox, created_at=now)
    session.add(account)
    session.flush()
    return account


def find_account(session: Session, name_or_id: str) -> Account:
    query = select(Account).where(Account.name == name_or_id)
    if name_or_id.isdigit():
        query = select(Account).where(
            (Account.id == int(name_or_id)) | (Account.name == name_or_id)
        )
    account = session.scalars(query).first()
    if account is None:
        raise UnknownAccountError(f"no account {name_or_id!r}")
    return account


def list_accounts(session: Session) -> list[AccountSummary]:
    out = []
    for account in session.scalars(select(Account).order_by(Account.id)):
        tokens = session.scalars(
            select(ApiToken).where(ApiToken.account_id == account.id, ApiToken.revoked_at.is_(None))
        ).all()
        out.append(
            AccountSummary(
                id=account.id,
                name=account.name,
                sandbox=account.sandbox,
                balance_cents=ledger.balance_cents(session, account.id),
                active_tokens=len(tokens),
            )
        )
    return out


def create_token(
    session: Session, account: Account, *, label: str, now: datetime
) -> tuple[ApiToken, str]:
    """Return the row and the token itself, which is shown once and never stored."""
    token = new_api_token()
    row = ApiToken(account_id=account.id, token_hash=hash_token(token), label=label, created_at=now)
    session.add(row)
    session.flush()
    return row, token


def revoke_token(session: Session, token_id: int, *, now: datetime) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise UnknownAccountError(f"no token with id {token_id}")
    row.revoked_at = row.revoked_at or now
    return row


# Recording every use would make each request a write; once a minute is enough for operators.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate(session: Session, token: str | None, now: datetime | None = None) -> AccountRef:
    """Find the account of an API token (SPEC 1.3); a bad token is code 400."""
    if not token:
        raise ApiError(Code.AUTH, "api_token is required")
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    # The lookup is by hash, so timing does not reveal the token; compare again in constant
    # time so that a future index change cannot turn this into a prefix oracle.
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        raise ApiError(Code.AUTH, "api_token is invalid or revoked")
    if now is not None and (
        row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION
    ):
        row.last_used_at = now
    account = session.get(Account, row.account_id)
    if account is None:  # pragma: no cover - foreign key guarantees it
        raise ApiError(Code.AUTH, "api_token is invalid or revoked")
    return AccountRef(id=account.id, name=account.name, sandbox=account.sandbox, token_id=row.id)
