"""The CA's "no" that retrying cannot change, as opposed to a failure of the moment."""

from __future__ import annotations


class SigningRefused(Exception):
    """The CA will not sign this request as it stands: the certificate profile refuses an input
    (BR 7.1.2.7) or pre-issuance linting found an error (BR 4.3.1.2). The order cannot be
    issued by trying again; `reason` is fit to show to the API client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
