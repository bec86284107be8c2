"""Order states and the one table of which call each state allows (DESIGN.md "Order states")."""

from __future__ import annotations

from enum import StrEnum

from certbroker.orders.errors import ApiError, Code


class Status(StrEnum):
    PENDING = "PENDING"
    COMPLETE = "COMPLETE"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    REVOKED = "REVOKED"
    REISSUED = "REISSUED"
    EXPIRED = "EXPIRED"


# Names are checked and certificates signed for a new order (PENDING) and, inside a running
# subscription, for the automatic reissue of an issued one (COMPLETE).
VALIDATING = frozenset({Status.PENDING, Status.COMPLETE})


class Operation(StrEnum):
    COLLECT = "collect"
    CANCEL = "cancel"
    UPDATE_DCV = "updateDCV"
    BATCH_UPDATE_DCV = "batchUpdateDCV"
    REMOVE_DOMAIN = "removeMdcDomain"
    BATCH_REMOVE_DOMAIN = "batchRemoveMdcDomain"
    REISSUE = "reissue"
    REPLACE = "replace"
    RENEW = "renew"
    REVOKE = "revoke"
    OV_DECISION = "ov"


ALLOWED: dict[Operation, frozenset[Status]] = {
    Operation.COLLECT: frozenset(Status),
    Operation.CANCEL: frozenset({Status.PENDING, Status.COMPLETE}),
    Operation.UPDATE_DCV: frozenset({Status.PENDING}),
    Operation.BATCH_UPDATE_DCV: frozenset({Status.PENDING}),
    Operation.REMOVE_DOMAIN: frozenset({Status.PENDING}),
    Operation.BATCH_REMOVE_DOMAIN: frozenset({Status.PENDING}),
    Operation.REISSUE: frozenset({Status.COMPLETE}),
    Operation.REPLACE: frozenset({Status.COMPLETE}),
    Operation.RENEW: frozenset({Status.COMPLETE, Status.EXPIRED}),
    # A superseded certificate stays valid until it expires, so it can still be revoked.
    Operation.REVOKE: frozenset({Status.COMPLETE, Status.REISSUED}),
    Operation.OV_DECISION: frozenset({Status.PENDING}),
}


def require_allowed(operation: Operation, status: str) -> None:
    """Raise the wire error for `operation` on an order in `status` (SPEC section 5)."""
    if Status(status) in ALLOWED[operation]:
        return
    if operation is Operation.CANCEL and status == Status.CANCELLED:
        raise ApiError(Code.ALREADY_CANCELLED, "The order has already been cancelled")
    raise ApiError(
        Code.CERT_STATE,
        f"{operation.value} is not allowed while the certificate is {status}",
    )
