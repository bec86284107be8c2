"""Approver e-mail pages (BR 3.2.2.4.4): open the one-time link, confirm, or enter the code.

Plain server-rendered HTML, no scripts. GET never approves anything: mail scanners and link
previews fetch URLs before people do, so approval takes a POST from the Confirm button. Every
value shown is escaped; the pages forbid framing, caching and referrers (the URL holds the token).
These are pages for people, not the Racent API: errors are HTML with a plain HTTP status.
"""

from __future__ import annotations

from html import escape
from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse

from certbroker.orders import email_dcv
from certbroker.orders.context import OrdersContext
from certbroker.orders.email_dcv import ApprovalRefusedError, ApprovalView, Refusal

STATUS = {
    Refusal.UNKNOWN: 404,
    Refusal.GONE: 410,
    Refusal.BAD_INPUT: 400,
    Refusal.WRONG_CODE: 400,
}

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;"
    "line-height:1.5}dt{font-weight:bold}dd{margin:0 0 .5em 0}"
    "button{font-size:1.1em;padding:.4em 1.2em}label{display:block;margin:.5em 0}"
    ".error{color:#a00}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>\n"
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _refused(exc: ApprovalRefusedError) -> HTMLResponse:
    return _page(
        "Approval not possible", f'<p class="error">{escape(exc.message)}</p>', STATUS[exc.kind]
    )


def _details(view: ApprovalView) -> str:
    others = [n for n in view.names if n != view.domain]
    rows = [
        ("Domain", view.domain),
        ("Certificate order", view.cert_id),
        ("Product", f"{view.product_name} ({view.product_code})"),
        ("Approver address", view.recipient),
    ]
    if others:
        rows.append(("Other names in the order", ", ".join(others)))
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"


def _approved(view: ApprovalView) -> HTMLResponse:
    return _page(
        "Domain approved",
        f"<p>Thank you. <strong>{escape(view.domain)}</strong> is now validated for "
        f"certificate order {escape(view.cert_id)}.</p>" + _details(view),
    )


def _code_form(cert_id: str = "", domain: str = "", error: str | None = None) -> str:
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    return (
        f"{message}<p>Enter the order, the domain and the 8-digit code from the approval "
        'e-mail.</p><form method="post" action="">'
        f'<label>Certificate order <input name="certId" value="{escape(cert_id)}" '
        'required maxlength="32" autocomplete="off"></label>'
        f'<label>Domain <input name="domain" value="{escape(domain)}" required '
        'maxlength="253" autocomplete="off"></label>'
        '<label>Code <input name="code" required inputmode="numeric" maxlength="12" '
        'autocomplete="one-time-code"></label>'
        '<button type="submit">Approve</button></form>'
    )


def approval_router(ctx: OrdersContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/dcv/approve/{token}")
    def show_approval(token: str) -> HTMLResponse:
        try:
            view = email_dcv.describe_approval(ctx, token)
        except ApprovalRefusedError as exc:
            return _refused(exc)
        return _page(
            "Approve a certificate request",
            "<p>A certificate has been requested for the domain below. Press Confirm only if "
            "you want it issued; to refuse, close this page.</p>"
            + _details(view)
            + f"<p>This request is valid until {escape(f'{view.expires_at:%Y-%m-%d %H:%M}')} "
            "UTC.</p>"
            '<form method="post" action=""><button type="submit">Confirm</button></form>',
        )

    @router.post("/dcv/approve/{token}")
    def confirm_approval(token: str) -> HTMLResponse:
        try:
            view = email_dcv.approve_by_token(ctx, token)
        except ApprovalRefusedError as exc:
            return _refused(exc)
        return _approved(view)

    @router.get("/dcv/code")
    def code_page(certId: str = "", domain: str = "") -> HTMLResponse:
        return _page("Approve with a code", _code_form(certId[:32], domain[:253]))

    @router.post("/dcv/code")
    def submit_code(
        cert_id: Annotated[str, Form(alias="certId")] = "",
        domain: Annotated[str, Form()] = "",
        code: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        try:
            view = email_dcv.approve_by_code(ctx, cert_id[:100], domain[:300], code[:100])
        except ApprovalRefusedError as exc:
            if exc.kind in (Refusal.WRONG_CODE, Refusal.BAD_INPUT):
                return _page(
                    "Approve with a code",
                    _code_form(cert_id[:32], domain[:253], exc.message),
                    STATUS[exc.kind],
                )
            return _refused(exc)
        return _approved(view)

    return router
