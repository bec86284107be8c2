"""Issuance, crash-safe the way Boulder does it (docs/ISSUANCE-CYCLE.md).

1. In one transaction: allocate the serial and store the to-be-signed data (row `signing`).
2. Sign in memory.
3. In one transaction: store the certificate, complete the order, write the event.
A crash between 1 and 3 leaves a `signing` row whose signature never left the process; the retry
signs the same serial and validity again, so no certificate exists that the database does not
know, and an order never gets two. The worker takes each step for its whole batch of orders in
one transaction (`issue_orders`), which keeps all of this.

The batch path is the worker's hot path: it runs statements built once at import on the
session's connection, a few per batch rather than ORM loads and flushes per order
(docs/PERFORMANCE.md). Core UPDATEs of an order add 1 to `Order.version` themselves, so the
ORM's optimistic lock (store/models.py) still sees every change made here.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection, Executable, Select, bindparam, exists, insert, select, update
from sqlalchemy.orm import Session

from certbroker import metrics
from certbroker.issuance.builtin import LeafRequest
from certbroker.issuance.profile import SubjectOrganization
from certbroker.issuance.refusal import SigningRefused
from certbroker.issuance.validity import leaf_not_after
from certbroker.orders.context import OrdersContext
from certbroker.orders.events import INSERT_EVENT, event_values, record_event
from certbroker.orders.refusals import Refusal, settle_refusals
from certbroker.orders.reuse import still_fresh
from certbroker.orders.states import VALIDATING, Status
from certbroker.orders.terms import next_renewal, subscription_end
from certbroker.pki.bundles import make_jks, make_pkcs12, random_password
from certbroker.pki.keys import PrivateKey, load_private_key_pem
from certbroker.policy.keys import key_refusal, spki_sha256
from certbroker.store import compromised_keys
from certbroker.store.db import lock_row
from certbroker.store.models import Certificate, Order, OrderName, UpstreamOrder, UtcDateTime
from certbroker.validation.caa import check_caa

log = structlog.get_logger("certbroker.issuance")

# Marks a name's last result as a CAA refusal (shown in collect until issuance succeeds).
CAA_PREFIX = "CAA: "
CAA_ALLOWS = "CAA allows issuance"

# Certificates start a little in the past so that clients with slow clocks accept them.
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class ReadyOrder:
    """An order leased for signing, with the names whose CAA must allow us first (none for the
    untrusted sandbox CA). Read at the claim: names are only ever removed from an order, so a
    name removed meanwhile is checked needlessly and none goes unchecked."""

    order_id: int
    caa_names: tuple[str, ...]


def claim_ready_orders(ctx: OrdersContext, owner: str, limit: int = 20) -> list[int]:
    """Lease orders that are ready to sign (PostgreSQL: SKIP LOCKED lets workers share)."""
    return [ready.order_id for ready in claim_issuance(ctx, owner, limit)]


@functools.cache
def _ready_orders(limit: int) -> Select[int, str | None]:
    """The claim's query, built once: it runs on every pass (`now` is a parameter)."""
    now = bindparam("now", type_=UtcDateTime)
    return (
        select(Order.id, Order.lease_owner)
        .where(
            Order.status.in_(VALIDATING),
            Order.issue_due_at.is_not(None),
            Order.issue_due_at <= now,
            (Order.lease_until.is_(None)) | (Order.lease_until < now),
            # Orders of upstream ACME products are issued upstream (orders/upstream_orders.py).
            ~exists().where(UpstreamOrder.order_id == Order.id),
        )
        .order_by(Order.issue_due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


# A lease stamp is not a change of the order's state: like every claim of work it leaves the
# version alone (rows are claimed with SKIP LOCKED, so no locked reader is overtaken).
_TAKE_LEASES = (
    update(Order)
    .where(Order.id.in_(bindparam("ids", expanding=True)))
    .values(lease_owner=bindparam("owner"), lease_until=bindparam("until"))
)
_CAA_NAMES = (
    select(OrderName.order_id, OrderName.name)
    .join(Order, Order.id == OrderName.order_id)
    .where(OrderName.order_id.in_(bindparam("ids", expanding=True)), Order.sandbox.is_(False))
    .order_by(OrderName.id)
)


def claim_issuance(ctx: OrdersContext, owner: str, limit: int = 20) -> list[ReadyOrder]:
    """claim_ready_orders with each order's CAA names, in the claim's one transaction."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        connection = session.connection()
        rows = connection.execute(_ready_orders(limit), {"now": now}).all()
        if not rows:
            return []
        ids = [row.id for row in rows]
        # An earlier owner's lease ran out (it crashed or stalled): its work is taken over.
        metrics.lease_taken_over("issuance", sum(row.lease_owner is not None for row in rows))
        connection.execute(
            _TAKE_LEASES, {"ids": ids, "owner": owner, "until": now + ctx.policy.lease}
        )
        names: dict[int, list[str]] = {order_id: [] for order_id in ids}
        for order_id, name in connection.execute(_CAA_NAMES, {"ids": ids}):
            names[order_id].append(name)
    return [ReadyOrder(order_id, tuple(names[order_id])) for order_id in ids]


class _Organized(Protocol):
    @property
    def validation_level(self) -> str: ...
    @property
    def apply_params(self) -> dict[str, Any]: ...


def organization_of(order: _Organized) -> SubjectOrganization | None:
    if order.validation_level == "dv":
        return None
    info = order.apply_params.get("organizationInfo") or {}
    if not isinstance(info, dict):
        return None

    def opt(key: str) -> str | None:
        value = info.get(key)
        return str(value) if value else None

    return SubjectOrganization(
        name=str(info.get("organizationName", "")),
        country=str(info.get("organizationCountry", "")).upper(),
        state=opt("organizationState"),
        locality=opt("organizationCity"),
        postal_code=opt("organizationPostCode"),
        street=opt("organizationAddress"),
        registration_number=opt("organizationRegNumber"),
        jurisdiction_country=str(info.get("organizationCountry", "")).upper() or None,
        business_category="Private Organization" if order.validation_level == "ev" else None,
    )


def _is_stale(verified_at: datetime | None, now: datetime) -> bool:
    return verified_at is not None and not still_fresh(verified_at, now)


def _stale_note(verified_at: datetime) -> str:
    return (
        f"the validation of {verified_at:%Y-%m-%d} is older than the reuse period "
        "in force; checking again"
    )


def expire_stale_validations(order: Order, now: datetime) -> list[str]:
    """BR 4.2.1: validation data older than the reuse period in force cannot back a certificate.
    Returns the names that must be validated again. (ORM objects: the batch issuance does the
    same with `_EXPIRE_NAME`.)"""
    stale: list[str] = []
    for name in order.names:
        if name.verified_at is not None and _is_stale(name.verified_at, now):
            name.last_result = _stale_note(name.verified_at)
            name.verified_at = None
            name.verified_how = None
            name.attempts = 0
            name.next_check_at = now
            stale.append(name.name)
    return stale


def _held_key(ctx: OrdersContext, cert_id: str, key_encrypted: str | None) -> PrivateKey | None:
    if key_encrypted is None:
        return None
    pem = ctx.box.decrypt(key_encrypted, context=cert_id.encode("ascii"))
    # Keys in this column were made or checked by certbroker: skip the slow RSA re-validation.
    return load_private_key_pem(pem, trusted=True)


def _bundles(
    ctx: OrdersContext, cert_id: str, sandbox: bool, key: PrivateKey, leaf: x509.Certificate
) -> str:
    issuer = ctx.ca.issuer(sandbox)
    chain = [issuer.certificate]
    p12_pass, jks_pass = random_password(), random_password()
    bundle = {
        "pkcs12": base64.b64encode(
            make_pkcs12(key, leaf, chain, p12_pass, friendly_name=cert_id)
        ).decode("ascii"),
        "pkcsPass": p12_pass,
        "jks": base64.b64encode(make_jks(key, leaf, chain, jks_pass, alias=cert_id)).decode(
            "ascii"
        ),
        "jksPass": jks_pass,
    }
    # The bundles hold the private key: encrypted at rest like the key itself.
    return ctx.box.encrypt(
        json.dumps(bundle).encode("utf-8"), context=f"bundle:{cert_id}".encode("ascii")
    )


# --- writes of a batch ----------------------------------------------------------------------


class _Writes:
    """A step's writes, kept order by order. They run as one executemany per statement for the
    whole batch (in one savepoint); only if that fails are they run again order by order, each
    in a savepoint of its own, so that one bad order fails alone without every order paying a
    SAVEPOINT on the common path."""

    def __init__(self, step: str) -> None:
        self.step = step
        self._by_order: dict[int, list[tuple[Executable, dict[str, Any]]]] = {}

    def add(self, order_id: int, statement: Executable, params: dict[str, Any]) -> None:
        self._by_order.setdefault(order_id, []).append((statement, params))

    def run(self, session: Session) -> set[int]:
        """Execute everything; returns the orders whose writes failed (logged, rolled back)."""
        if not self._by_order:
            return set()
        try:
            with session.begin_nested():
                # Asked for inside the block: that is when the session emits the SAVEPOINT.
                _execute_grouped(session.connection(), self._all())
            return set()
        except Exception as error:
            log.warning(
                "issuance batch write failed, retrying order by order",
                step=self.step,
                error=type(error).__name__,
            )
        failed: set[int] = set()
        for order_id, writes in self._by_order.items():
            try:
                with session.begin_nested():
                    _execute_grouped(session.connection(), writes)
            except Exception:
                log.exception("issuance failed", order_id=order_id, step=self.step)
                failed.add(order_id)
        return failed

    def _all(self) -> Iterable[tuple[Executable, dict[str, Any]]]:
        for writes in self._by_order.values():
            yield from writes


def _execute_grouped(
    connection: Connection, writes: Iterable[tuple[Executable, dict[str, Any]]]
) -> None:
    """One execution (executemany) per statement, statements in the order first added."""
    grouped: dict[int, tuple[Executable, list[dict[str, Any]]]] = {}
    for statement, params in writes:
        grouped.setdefault(id(statement), (statement, []))[1].append(params)
    for statement, many in grouped.values():
        connection.execute(statement, many)


def _group_by_order(rows: Iterable[Any]) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row.order_id, []).append(row)
    return grouped


# --- step 1: the `signing` rows ---------------------------------------------------------------


@dataclass(frozen=True)
class _OrderFacts:
    """The columns of an order that step 1 reads under the order's row lock."""

    id: int
    cert_id: str
    status: str
    ov_status: str
    sandbox: bool
    validation_level: str
    apply_params: dict[str, Any]
    csr_pem: str
    key_encrypted: str | None
    years: int
    trial_days: int | None
    bonus_days: int
    due_at: datetime | None


_FACTS = tuple(f.name for f in fields(_OrderFacts))

# The batch's orders that are still ours, locked in id order (PostgreSQL `FOR UPDATE`; SQLite:
# BEGIN IMMEDIATE already serialised us): a worker that took over an expired lease waits here
# instead of allocating a second serial beside ours, and two batches cannot deadlock. After
# the wait PostgreSQL checks `lease_owner` again on the latest row, so a lease taken over
# meanwhile drops the order from the result.
_LOCK_ORDERS = (
    select(*(getattr(Order, f) for f in _FACTS))
    .where(Order.id.in_(bindparam("ids", expanding=True)), Order.lease_owner == bindparam("owner"))
    .order_by(Order.id)
    .with_for_update()
)
# Read after the orders' locks: every writer of names locks their order first (orders/dcv.py).
_NAMES = (
    select(OrderName.id, OrderName.order_id, OrderName.name, OrderName.verified_at)
    .where(OrderName.order_id.in_(bindparam("ids", expanding=True)))
    .order_by(OrderName.order_id, OrderName.position)
)
_CERTIFICATES = (
    select(
        Certificate.order_id,
        Certificate.state,
        Certificate.serial_hex,
        Certificate.generation,
        Certificate.not_before,
        Certificate.not_after,
    )
    .where(Certificate.order_id.in_(bindparam("ids", expanding=True)))
    .order_by(Certificate.id)
)
_INSERT_SIGNING = insert(Certificate)
_SET_DUE = (
    update(Order)
    .where(Order.id == bindparam("order_id"))
    .values(due_at=bindparam("due"), version=Order.version + 1)
)
# Not ready (any more): leave the queue; a later event (a name validated again) queues it anew.
_RELEASE = (
    update(Order)
    .where(Order.id == bindparam("order_id"))
    .values(issue_due_at=None, lease_owner=None, lease_until=None, version=Order.version + 1)
)
_EXPIRE_NAME = (
    update(OrderName)
    .where(OrderName.id == bindparam("name_id"))
    .values(
        last_result=bindparam("note"),
        verified_at=None,
        verified_how=None,
        attempts=0,
        next_check_at=bindparam("now"),
    )
)


@dataclass(frozen=True)
class _ToSign:
    """An order with its `signing` row committed: what step 2 signs and step 3 stores."""

    order_id: int
    cert_id: str
    sandbox: bool
    key_encrypted: str | None
    serial_hex: str
    generation: int
    request: LeafRequest

    @property
    def not_before(self) -> datetime:
        return self.request.not_before

    @property
    def not_after(self) -> datetime:
        return self.request.not_after


def _start_signing(
    ctx: OrdersContext, order_ids: list[int], owner: str, now: datetime
) -> list[_ToSign]:
    """Step 1 for the batch, in one transaction: the `signing` rows and what to sign."""
    if not order_ids:
        return []
    to_sign: dict[int, _ToSign] = {}
    writes = _Writes("prepare")
    with ctx.db.transaction() as session:
        connection = session.connection()
        orders = [
            _OrderFacts(*row)
            for row in connection.execute(_LOCK_ORDERS, {"ids": order_ids, "owner": owner})
        ]
        if not orders:
            return []
        ours = {"ids": [order.id for order in orders]}
        names = _group_by_order(connection.execute(_NAMES, ours))
        certificates = _group_by_order(connection.execute(_CERTIFICATES, ours))
        for order in orders:
            try:
                item = _plan_start(
                    ctx, order, names.get(order.id, []), certificates.get(order.id, []), now
                )
            except Exception:  # e.g. a CSR that does not parse: this order alone, no write
                log.exception("issuance failed", order_id=order.id, step="prepare")
                continue
            for statement, params in item.writes:
                writes.add(order.id, statement, params)
            if item.to_sign is not None:
                to_sign[order.id] = item.to_sign
        failed = writes.run(session)
    return [item for order_id, item in to_sign.items() if order_id not in failed]


@dataclass(frozen=True)
class _StartPlan:
    """What step 1 does for one order, decided before anything is written."""

    to_sign: _ToSign | None
    writes: list[tuple[Executable, dict[str, Any]]]


def _plan_start(
    ctx: OrdersContext,
    order: _OrderFacts,
    names: Sequence[Any],
    certificates: Sequence[Any],
    now: datetime,
) -> _StartPlan:
    """Step 1 for one order, computed in full (it may raise) before any of it is written."""
    release = (_RELEASE, {"order_id": order.id})
    if order.status not in VALIDATING or order.ov_status != "done":
        return _StartPlan(None, [release])
    # BR 4.2.1: validation older than the reuse period in force cannot back a certificate.
    stale = [] if order.sandbox else [n for n in names if _is_stale(n.verified_at, now)]
    if stale or any(n.verified_at is None for n in names):
        expire = [
            (_EXPIRE_NAME, {"name_id": n.id, "note": _stale_note(n.verified_at), "now": now})
            for n in stale
        ]
        return _StartPlan(None, [*expire, release])
    writes: list[tuple[Executable, dict[str, Any]]] = []
    pending = next((c for c in certificates if c.state == "signing"), None)
    if pending is not None:
        # An earlier attempt crashed after step 1: sign the same serial and validity again.
        serial_hex, generation = pending.serial_hex, pending.generation
        not_before, not_after = pending.not_before, pending.not_after
    else:
        # X.509 times have whole seconds: store exactly what the certificate will say.
        not_before = (now - BACKDATE).replace(microsecond=0)
        due = order.due_at or subscription_end(order, now)
        not_after = leaf_not_after(not_before, due)
        serial_hex = format(ctx.ca.new_serial(), "x")
        generation = 1 + len(certificates)
        writes.append(
            (
                _INSERT_SIGNING,
                {
                    "order_id": order.id,
                    "generation": generation,
                    "serial_hex": serial_hex,
                    "issuer": "sandbox" if order.sandbox else "production",
                    "state": "signing",
                    "not_before": not_before,
                    "not_after": not_after,
                    "created_at": now,
                },
            )
        )
        if order.due_at is None:
            writes.append((_SET_DUE, {"order_id": order.id, "due": due}))
    request = LeafRequest(
        serial=int(serial_hex, 16),
        public_key=x509.load_pem_x509_csr(order.csr_pem.encode("ascii")).public_key(),
        names=[n.name for n in names],
        not_before=not_before,
        not_after=not_after,
        validation_level=order.validation_level,
        organization=organization_of(order),
        sandbox=order.sandbox,
    )
    to_sign = _ToSign(
        order_id=order.id,
        cert_id=order.cert_id,
        sandbox=order.sandbox,
        key_encrypted=order.key_encrypted,
        serial_hex=serial_hex,
        generation=generation,
        request=request,
    )
    return _StartPlan(to_sign, writes)


# --- step 2: signatures, outside any transaction -------------------------------------------


@dataclass(frozen=True)
class _Signed:
    item: _ToSign
    pem: str
    chain_pem: str
    bundles_encrypted: str | None


def _sign(ctx: OrdersContext, item: _ToSign) -> _Signed:
    """The leaf and, for a key the platform holds, its encrypted PKCS#12/JKS bundles: all the
    per-order work that can fail, done before step 3 so that step 3 only writes. The key and
    the CSR were read together in step 1, so the bundles hold the key that was signed."""
    leaf = ctx.ca.sign(item.request)
    key = _held_key(ctx, item.cert_id, item.key_encrypted)
    return _Signed(
        item=item,
        pem=leaf.public_bytes(Encoding.PEM).decode("ascii"),
        chain_pem=ctx.ca.issuer(item.sandbox).chain_pem,
        bundles_encrypted=None
        if key is None
        else _bundles(ctx, item.cert_id, item.sandbox, key, leaf),
    )


def _sign_all(
    ctx: OrdersContext, to_sign: Sequence[_ToSign]
) -> tuple[list[_Signed], list[Refusal]]:
    """The signatures, and the orders the CA refused (settled by orders/refusals.py)."""
    signed: list[_Signed] = []
    refused: list[Refusal] = []
    # BR 6.1.1.3: a key revoked for keyCompromise since the order was placed (an automatic
    # reissue reuses the customer's key) is refused here, right before the signature.
    digests = {item.order_id: spki_sha256(item.request.public_key) for item in to_sign}
    with ctx.db.read() as session:
        compromised = compromised_keys.among(session, digests.values())
    for item in to_sign:
        if digests[item.order_id] in compromised:
            problem = key_refusal(item.request.public_key, compromised=True)
            assert problem is not None
            refused.append(Refusal(item.order_id, item.serial_hex, problem.reason))
            continue
        try:
            signed.append(_sign(ctx, item))
        except SigningRefused as refusal:  # retrying cannot help: the order is settled
            refused.append(Refusal(item.order_id, item.serial_hex, refusal.reason))
        except Exception:  # this order keeps its `signing` row and its lease: retried later
            log.exception("issuance failed", order_id=item.order_id, step="sign")
    return signed, refused


# --- step 3: store, complete, tell ----------------------------------------------------------

# The orders again, still ours and locked in id order: we wait behind a cancel or a competing
# issuance of one of them, and read what it committed.
_LOCK_FOR_STORE = (
    select(
        Order.id, Order.status, Order.account_id, Order.cert_id, Order.completed_at, Order.due_at
    )
    .where(Order.id.in_(bindparam("ids", expanding=True)), Order.lease_owner == bindparam("owner"))
    .order_by(Order.id)
    .with_for_update()
)
# Our rows still `signing` (a cancel abandons them under the order's lock), locked in turn.
_SIGNING_ROWS = (
    select(Certificate.id, Certificate.serial_hex)
    .where(
        Certificate.serial_hex.in_(bindparam("serials", expanding=True)),
        Certificate.state == "signing",
    )
    .order_by(Certificate.id)
    .with_for_update()
)
_STORE_CERTIFICATE = (
    update(Certificate)
    .where(Certificate.id == bindparam("cert_row_id"))
    .values(
        state="issued",
        pem=bindparam("pem"),
        chain_pem=bindparam("chain"),
        issued_at=bindparam("now"),
        bundles_encrypted=bindparam("bundles"),
    )
)
_ABANDON = (
    update(Certificate).where(Certificate.id == bindparam("cert_row_id")).values(state="abandoned")
)
_COMPLETE = (
    update(Order)
    .where(Order.id == bindparam("order_id"))
    .values(
        status=Status.COMPLETE.value,
        completed_at=bindparam("completed"),
        issue_due_at=None,
        lease_owner=None,
        lease_until=None,
        updated_at=bindparam("now"),
        renew_due_at=bindparam("renew"),
        last_error=None,  # a refusal of an earlier attempt is over
        version=Order.version + 1,
    )
)
# A CAA refusal shown on a name is over once the certificate is issued.
_CAA_ALLOWED = (
    update(OrderName)
    .where(
        OrderName.order_id == bindparam("b_order_id"),
        OrderName.last_result.startswith(CAA_PREFIX, autoescape=True),
    )
    .values(last_result=CAA_ALLOWS)
)


def _store_signed(
    ctx: OrdersContext, signed: Sequence[_Signed], owner: str, now: datetime
) -> set[int]:
    """Step 3 for the batch, in one transaction; returns the orders issued."""
    completing: set[int] = set()
    writes = _Writes("store")
    with ctx.db.transaction() as session:
        connection = session.connection()
        ids = sorted(s.item.order_id for s in signed)
        orders = {
            row.id: row for row in connection.execute(_LOCK_FOR_STORE, {"ids": ids, "owner": owner})
        }
        serials = [s.item.serial_hex for s in signed]
        rows = {
            row.serial_hex: row.id
            for row in connection.execute(_SIGNING_ROWS, {"serials": serials})
        }
        for done in signed:
            item = done.item
            order, cert_row_id = orders.get(item.order_id), rows.get(item.serial_hex)
            if order is None or cert_row_id is None:
                # Taken over (the new owner signs this serial again and stores it), or the row
                # was abandoned or stored meanwhile.
                continue
            if order.status not in VALIDATING:
                # Cancelled or failed while we signed: this signature never left the process.
                writes.add(item.order_id, _ABANDON, {"cert_row_id": cert_row_id})
                writes.add(item.order_id, _RELEASE, {"order_id": item.order_id})
                continue
            for statement, params in _completion(ctx, order, cert_row_id, done, now):
                writes.add(item.order_id, statement, params)
            completing.add(item.order_id)
        failed = writes.run(session)
    return completing - failed


def _completion(
    ctx: OrdersContext, order: Any, cert_row_id: int, done: _Signed, now: datetime
) -> list[tuple[Executable, dict[str, Any]]]:
    """The writes that store one certificate and complete its order (`order`: a row of
    `_LOCK_FOR_STORE`)."""
    item = done.item
    first = order.status == Status.PENDING
    event = event_values(
        account_id=order.account_id,
        order_id=item.order_id,
        cert_id=order.cert_id,
        status=Status.COMPLETE.value,
        kind="certificate.issued" if first else "certificate.reissued",
        payload={"serial": item.serial_hex, "generation": item.generation, "automatic": not first},
        now=now,
    )
    return [
        (
            _STORE_CERTIFICATE,
            {
                "cert_row_id": cert_row_id,
                "pem": done.pem,
                "chain": done.chain_pem,
                "now": now,
                "bundles": done.bundles_encrypted,
            },
        ),
        (
            _COMPLETE,
            {
                "order_id": item.order_id,
                "completed": order.completed_at or now,
                "now": now,
                "renew": next_renewal(ctx, item, order.due_at),
            },
        ),
        (_CAA_ALLOWED, {"b_order_id": item.order_id}),
        (INSERT_EVENT, event),
    ]


# --- the cycle ------------------------------------------------------------------------------


def issue_order(ctx: OrdersContext, order_id: int, owner: str) -> bool:
    """Sign the order's certificate if it is still ready and ours; True when it was issued."""
    return issue_orders(ctx, [order_id], owner)[order_id]


def issue_orders(ctx: OrdersContext, order_ids: Sequence[int], owner: str) -> dict[int, bool]:
    """issue_order for several orders with the module docstring's steps taken together: step 1
    for all of them in one transaction, then each signature, then step 3 for all in one
    transaction. Every `signing` row is committed before any signature is made, so a crash
    still leaves only rows to sign again. An order that fails (logged) at any step is left
    alone, as if it had failed by itself: its writes of that step are not made and it keeps
    its lease until the lease runs out, while the others go on; an order the CA refuses is
    settled at once instead (orders/refusals.py). Returns order id -> issued."""
    now = ctx.clock.now()
    issued = dict.fromkeys(order_ids, False)
    to_sign = _start_signing(ctx, sorted(issued), owner, now)
    signed, refused = _sign_all(ctx, to_sign)
    if refused:
        settle_refusals(ctx, refused, owner, now)
    if signed:
        for order_id in _store_signed(ctx, signed, owner, now):
            issued[order_id] = True
    return issued


async def caa_refusals(
    ctx: OrdersContext, orders: Sequence[ReadyOrder]
) -> dict[int, dict[str, str]]:
    """BR 3.2.2.8: CAA checked for every name right before issuance (well inside 8 hours).
    Every name of the batch is looked up at once, each only once; returns, for each order CAA
    refuses, name -> reason. Nothing to look up (sandbox orders): no await at all."""
    names = sorted({name for order in orders for name in order.caa_names})
    if not names:
        return {}
    results = await asyncio.gather(
        *(
            check_caa(
                name,
                issuer_domains=ctx.policy.caa_domains,
                resolver_address=ctx.policy.dcv_resolver,
                timeout=ctx.policy.dcv_timeout_seconds,
            )
            for name in names
        )
    )
    refused = {
        name: result.detail for name, result in zip(names, results, strict=True) if not result.ok
    }
    out: dict[int, dict[str, str]] = {}
    for order in orders:
        failures = {name: refused[name] for name in order.caa_names if name in refused}
        if failures:
            out[order.order_id] = failures
    return out


def defer_for_caa(ctx: OrdersContext, order_id: int, owner: str, failures: dict[str, str]) -> None:
    """CAA refused (or could not be read): say so on each name and try again later."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = lock_row(session, Order, order_id)
        if order is None or order.lease_owner != owner:
            return
        for row in order.names:
            if row.name in failures:
                detail = f"{CAA_PREFIX}{failures[row.name]}"
                if row.last_result != detail:
                    record_event(
                        session,
                        order,
                        "domain.check_failed",
                        {"domainName": row.name, "error": detail},
                        now,
                    )
                row.last_result = detail
        order.issue_due_at = now + ctx.policy.caa_retry
        order.lease_owner = None
        order.lease_until = None
