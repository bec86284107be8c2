"""The outcome of one domain control check, as shown to resellers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """Whether a check passed, and why not.

    `detail` is shown to resellers verbatim, so it names what was fetched and what went wrong
    ("HTTP 404 at http://shop.example.com/.well-known/pki-validation/ABC.txt").
    `checked_url` is the URL whose answer decided the result (after redirects), or None when the
    check failed before any URL could be built.
    """

    ok: bool
    detail: str
    checked_url: str | None = None
