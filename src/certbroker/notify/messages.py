"""Texts of outgoing mail, as pure functions (no I/O): the approver e-mail of BR 3.2.2.4.4."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approver needs to decide: which domain, for which order, and how to answer."""

    domain: str
    recipient: str
    cert_id: str
    product_code: str
    product_name: str
    names: tuple[str, ...]
    approve_url: str
    code_url: str
    code: str
    random_value: str
    expires_at: datetime


def _utc(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


def _fill(text: str) -> str:
    # Prose only: URLs and values stay on their own unbroken lines.
    return textwrap.fill(text, width=72, break_long_words=False, break_on_hyphens=False)


def approval_subject(domain: str) -> str:
    return f"Approve the SSL certificate request for {domain}"


def approval_body(req: ApprovalRequest) -> str:
    """Plain text: the domain, the order, the link, the code, and that ignoring it refuses."""
    others = [n for n in req.names if n != req.domain]
    lines = [
        _fill(f"A certificate has been requested for {req.domain}."),
        "",
        _fill(
            f"You receive this message because {req.recipient} is one of the addresses that "
            "may approve certificates for this domain (admin, administrator, webmaster, "
            "hostmaster or postmaster at the domain or a parent of it; CA/Browser Forum "
            "Baseline Requirements 3.2.2.4.4)."
        ),
        "",
        f"  Domain:        {req.domain}",
        f"  Order:         {req.cert_id}",
        f"  Product:       {req.product_name} ({req.product_code})",
    ]
    if others:
        lines.append(f"  Other names:   {', '.join(others)}")
    lines += [
        "",
        "To approve, open this link and press Confirm:",
        "",
        f"  {req.approve_url}",
        "",
        "Or enter this code, with the order and domain above, at",
        "",
        f"  {req.code_url}",
        "",
        f"  Code:          {req.code}",
        "",
        f"Random Value:    {req.random_value}",
        f"Valid until:     {_utc(req.expires_at)} (single use)",
        "",
        _fill(
            "If you did not expect this request, or do not want this certificate issued, "
            "simply ignore this message: nothing is approved unless you confirm."
        ),
        "",
    ]
    return "\n".join(lines)


def build_message(
    *, sender: str, recipient: str, subject: str, body: str, date: datetime
) -> EmailMessage:
    """An RFC 5322 message; marked as automatically generated (RFC 3834) so that
    vacation responders stay quiet."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    message["Auto-Submitted"] = "auto-generated"
    # 7bit keeps links and codes readable in the raw message (no quoted-printable soft breaks);
    # names are A-labels, so bodies are ASCII unless a product name is not.
    message.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
    return message
