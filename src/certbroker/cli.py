"""`certbroker` command line: the server and the operator's admin commands (same database)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from secrets import token_hex
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from certbroker import bootstrap, logs
from certbroker.app import create_app
from certbroker.clock import SystemClock
from certbroker.orders import accounts, cancelling, ledger
from certbroker.orders.errors import ApiError
from certbroker.settings import Settings
from certbroker.store.db import Database

app = typer.Typer(no_args_is_help=True, help="certbroker: certificate ordering platform")
account_app = typer.Typer(no_args_is_help=True, help="Reseller accounts")
token_app = typer.Typer(no_args_is_help=True, help="API tokens")
ov_app = typer.Typer(no_args_is_help=True, help="Organization validation of OV/EV orders")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
app.add_typer(account_app, name="account")
app.add_typer(token_app, name="token")
app.add_typer(ov_app, name="ov")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)


def _db() -> Database:
    return bootstrap.open_database(Settings())


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (CERTBROKER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (CERTBROKER_PORT)")] = None,
) -> None:
    """Start the API server (and its in-process worker) on the configured data directory."""
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logs.configure(settings.log_level, settings.log_format)
    ctx = bootstrap.build_context(settings, SystemClock())
    first = bootstrap.ensure_first_account(ctx)
    if first is not None:
        # Shown once: only its hash is stored.
        out.print(f"Created reseller account '{first.name}'. Its API token (shown only now):")
        out.print(first.token, soft_wrap=True, highlight=False)
    out.print(
        f"certbroker listening on http://{settings.host}:{settings.port}/ssl/ "
        f"(data: {settings.data_dir.resolve()})",
        highlight=False,
    )
    api = create_app(
        ctx, worker=settings.worker_in_process, poll_seconds=settings.worker_poll_seconds
    )
    uvicorn.run(api, host=settings.host, port=settings.port, log_config=None, access_log=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations."""
    _db()
    out.print("database is up to date")


@account_app.command("create")
def account_create(
    name: str,
    sandbox: Annotated[
        bool, typer.Option(help="Validation passes without DCV; sandbox CA")
    ] = False,
    token_label: Annotated[str, typer.Option(help="Label of the first token")] = "initial",  # noqa: S107
) -> None:
    """Create a reseller account and its first API token (printed once)."""
    db = _db()
    now = SystemClock().now()
    try:
        with db.transaction() as session:
            account = accounts.create_account(session, name, sandbox=sandbox, now=now)
            row, token = accounts.create_token(session, account, label=token_label, now=now)
            account_id, token_id = account.id, row.id
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    out.print(
        f"account {account_id} '{name}'{' (sandbox)' if sandbox else ''}; token id {token_id}:"
    )
    out.print(token, soft_wrap=True, highlight=False)


@account_app.command("list")
def account_list() -> None:
    """Accounts with their balances."""
    db = _db()
    with db.transaction() as session:
        rows = accounts.list_accounts(session)
    table = Table("id", "name", "sandbox", "balance (USD)", "active tokens")
    for row in rows:
        table.add_row(
            str(row.id),
            row.name,
            "yes" if row.sandbox else "no",
            ledger.format_cents(row.balance_cents),
            str(row.active_tokens),
        )
    out.print(table)


@account_app.command("topup")
def account_topup(
    account: Annotated[str, typer.Argument(help="Account name or id")],
    amount: Annotated[str, typer.Argument(help="Amount in USD, e.g. 100.00")],
    note: Annotated[str, typer.Option(help="Ledger note")] = "",
) -> None:
    """Add prepaid balance (a ledger entry)."""
    try:
        scaled = Decimal(amount) * 100
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            raise InvalidOperation
        cents = int(scaled)
    except (InvalidOperation, ArithmeticError) as exc:
        raise _fail(f"amount {amount!r} is not a number of USD with at most 2 decimals") from exc
    if cents <= 0:
        raise _fail("amount must be positive")
    db = _db()
    clock = SystemClock()
    try:
        with db.transaction() as session:
            row = accounts.find_account(session, account)
            ledger.post(
                session,
                account_id=row.id,
                amount_cents=cents,
                kind="topup",
                op_key=f"topup:{token_hex(12)}",
                now=clock.now(),
                note=note,
            )
            session.flush()
            balance = ledger.balance_cents(session, row.id)
    except accounts.UnknownAccountError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"balance of {account}: {ledger.format_cents(balance)} USD")


@token_app.command("create")
def token_create(
    account: Annotated[str, typer.Argument(help="Account name or id")],
    label: Annotated[str, typer.Option(help="What the token is for")] = "",
) -> None:
    """Issue another API token for an account (printed once)."""
    db = _db()
    try:
        with db.transaction() as session:
            row, token = accounts.create_token(
                session,
                accounts.find_account(session, account),
                label=label,
                now=SystemClock().now(),
            )
            token_id = row.id
    except accounts.UnknownAccountError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"token id {token_id}:")
    out.print(token, soft_wrap=True, highlight=False)


@token_app.command("revoke")
def token_revoke(token_id: int) -> None:
    """Revoke an API token by its id."""
    db = _db()
    try:
        with db.transaction() as session:
            accounts.revoke_token(session, token_id, now=SystemClock().now())
    except accounts.UnknownAccountError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"token {token_id} revoked")


def _ov_decision(cert_id: str, note: str, approve: bool) -> None:
    ctx = bootstrap.build_context(Settings())
    try:
        if approve:
            cancelling.approve_organization(ctx, cert_id, note)
        else:
            cancelling.reject_organization(ctx, cert_id, note)
    except (ApiError, LookupError) as exc:
        raise _fail(str(exc)) from exc
    out.print(f"{cert_id}: organization {'approved' if approve else 'rejected'}")


@ov_app.command("approve")
def ov_approve(cert_id: str, note: Annotated[str, typer.Option(help="Vetting note")] = "") -> None:
    """Approve the vetted company data of an OV/EV order."""
    _ov_decision(cert_id, note, approve=True)


@ov_app.command("reject")
def ov_reject(cert_id: str, note: Annotated[str, typer.Option(help="Why")] = "") -> None:
    """Reject the company data of an OV/EV order: it fails and is refunded."""
    _ov_decision(cert_id, note, approve=False)


def main() -> None:
    app()
