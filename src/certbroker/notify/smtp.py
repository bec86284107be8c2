"""Sending one message over SMTP (RFC 5321) with the standard library, in the caller's thread.

Failures are classified so the outbox can decide: a 5xx reply is permanent (RFC 5321 4.2.1:
"permanent negative completion"), everything else (4xx, refused or dropped connection, timeout)
is worth retrying later.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    helo_name: str  # our name in EHLO; given, so smtplib does no reverse lookup of the host
    timeout: float = 10.0

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


class MailDeliveryError(Exception):
    """The message was not accepted. `permanent`: do not retry; `unreachable`: the server
    itself could not be talked to (no point trying other messages right now)."""

    def __init__(self, message: str, *, permanent: bool, unreachable: bool) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.unreachable = unreachable


def _reply_text(message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return " ".join(text.split())[:200]


def send(server: SmtpServer, message: EmailMessage) -> None:
    """Deliver `message` to its To address; raise MailDeliveryError when it is not accepted."""
    where = f"SMTP server {server.label}"
    try:
        with smtplib.SMTP(
            server.host, server.port, local_hostname=server.helo_name, timeout=server.timeout
        ) as smtp:
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _text in exc.recipients.values()]
        replies = "; ".join(f"{code} {_reply_text(text)}" for code, text in exc.recipients.values())
        raise MailDeliveryError(
            f"{where} refused the recipient: {replies}",
            permanent=all(500 <= code < 600 for code in codes),
            unreachable=False,
        ) from exc
    except smtplib.SMTPConnectError as exc:
        # The greeting was negative: the server, not this message, is the problem.
        raise MailDeliveryError(
            f"{where} refused the session: {exc.smtp_code} {_reply_text(exc.smtp_error)}",
            permanent=False,
            unreachable=True,
        ) from exc
    except smtplib.SMTPResponseException as exc:
        raise MailDeliveryError(
            f"{where} answered {exc.smtp_code} {_reply_text(exc.smtp_error)}",
            permanent=500 <= exc.smtp_code < 600,
            unreachable=False,
        ) from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise MailDeliveryError(
            f"{where} closed the connection ({exc})", permanent=False, unreachable=True
        ) from exc
    except TimeoutError as exc:
        raise MailDeliveryError(
            f"{where} did not answer within {server.timeout:g} s", permanent=False, unreachable=True
        ) from exc
    except ConnectionRefusedError as exc:
        raise MailDeliveryError(
            f"{where} refused the connection", permanent=False, unreachable=True
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise MailDeliveryError(
            f"{where} could not be reached: {type(exc).__name__}: {exc}",
            permanent=False,
            unreachable=True,
        ) from exc
