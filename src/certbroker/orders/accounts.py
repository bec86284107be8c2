"""Reseller accounts and API tokens (stored as hashes only)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.orders import ledger
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.ids import new_api_token
from certbroker.store.db import Database
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
    """Find the account of an API token (SPEC 1.3); a bad token is code 400.

    With `now`, records the use (at most once per LAST_USED_RESOLUTION): call it in a
    transaction then, or use `TokenCache.authenticate`, which reads first and writes only when
    the record is due."""
    row, account = _token_and_account(session, token)
    if now is not None and _use_due(row, now):
        row.last_used_at = now
    return AccountRef(id=account.id, name=account.name, sandbox=account.sandbox, token_id=row.id)


def _token_and_account(session: Session, token: str | None) -> tuple[ApiToken, Account]:
    if not token:
        raise ApiError(Code.AUTH, "api_token is required")
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    # The lookup is by hash, so timing does not reveal the token; compare again in constant
    # time so that a future index change cannot turn this into a prefix oracle.
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        raise ApiError(Code.AUTH, "api_token is invalid or revoked")
    account = session.get(Account, row.account_id)
    if account is None:  # pragma: no cover - foreign key guarantees it
        raise ApiError(Code.AUTH, "api_token is invalid or revoked")
    return row, account


def _use_due(row: ApiToken, now: datetime) -> bool:
    return row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION


class TokenCache:
    """Tokens that authenticated in the last `ttl_seconds`, so that a polling client costs no
    database work per request (docs/PERFORMANCE.md, P4).

    The price is a bounded delay: a token revoked by another process (the CLI) keeps working
    here for at most `ttl_seconds`; `forget_token` ends it at once in this process. Failures are
    never cached: a revoked or unknown token is looked up every time."""

    def __init__(
        self,
        ttl_seconds: float = 5.0,
        *,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._monotonic = monotonic
        self._entries: OrderedDict[str, tuple[AccountRef, float]] = OrderedDict()
        self._lock = threading.Lock()

    def authenticate(self, db: Database, token: str | None, now: datetime) -> AccountRef:
        if not token:
            raise ApiError(Code.AUTH, "api_token is required")
        digest = hash_token(token)
        cached = self._get(digest)
        if cached is not None:
            return cached
        with db.read() as session:
            row, account = _token_and_account(session, token)
            due = _use_due(row, now)
            ref = AccountRef(
                id=account.id, name=account.name, sandbox=account.sandbox, token_id=row.id
            )
        if due:
            # The write lock only when the use is worth recording (once a minute per token).
            with db.transaction() as session:
                ref = authenticate(session, token, now)
        self._put(digest, ref)
        return ref

    def forget_token(self, token_id: int) -> None:
        with self._lock:
            for digest in [d for d, (ref, _) in self._entries.items() if ref.token_id == token_id]:
                del self._entries[digest]

    def _get(self, digest: str) -> AccountRef | None:
        if self.ttl_seconds <= 0:
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            ref, expires = entry
            if self._monotonic() >= expires:
                del self._entries[digest]
                return None
            return ref

    def _put(self, digest: str, ref: AccountRef) -> None:
        if self.ttl_seconds <= 0:
            return
        with self._lock:
            self._entries[digest] = (ref, self._monotonic() + self.ttl_seconds)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
