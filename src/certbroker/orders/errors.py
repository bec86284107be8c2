"""Result codes of the Racent wire contract (SPEC Appendix A) and the error that carries them."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    SUCCESS = 1
    IN_PROGRESS = 2
    INVALID = -1
    UNEXPECTED = -2
    PRODUCT = -3
    BALANCE = -4
    ORDER_STATE = -5
    CA_FAILED = -6
    CERT_STATE = -7
    ALREADY_CANCELLED = -8
    AUTH = 400


FieldErrors = dict[str, list[str]]


class ApiError(Exception):
    """A business failure answered inside the envelope: `{code, errors}`.

    `errors` is a plain string for a single general problem, or a mapping of field name to
    messages (Laravel MessageBag style, SPEC 1.4) for validation failures.
    """

    def __init__(self, code: Code, errors: str | FieldErrors) -> None:
        super().__init__(
            errors
            if isinstance(errors, str)
            else "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
        )
        self.code = code
        self.errors = errors

    @classmethod
    def invalid(cls, field: str, message: str) -> ApiError:
        return cls(Code.INVALID, {field: [message]})
