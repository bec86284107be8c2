"""`certbroker` command line: the server and the operator's admin commands (same database)."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import tempfile
from decimal import Decimal, InvalidOperation
from secrets import token_hex
from typing import Annotated, Any

import typer
import uvicorn
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from certbroker import bootstrap, keyring, logs, metrics
from certbroker.api import http_protocol
from certbroker.api.limits import ApiGuard, ApiLimits
from certbroker.api.racent.routes import configure_limits
from certbroker.app import create_app
from certbroker.clock import SystemClock
from certbroker.dns_delegation import serving
from certbroker.orders import (
    accounts,
    audit,
    cancelling,
    compromised_keys,
    ledger,
    upstream_accounts,
    webhook_settings,
)
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError
from certbroker.policy import public_suffixes
from certbroker.policy.names import refusal as name_refusal
from certbroker.policy.names import well_formed
from certbroker.settings import Settings
from certbroker.store.db import Database
from certbroker.worker.runner import run_until_signalled

app = typer.Typer(no_args_is_help=True, help="certbroker: certificate ordering platform")
account_app = typer.Typer(no_args_is_help=True, help="Reseller accounts")
token_app = typer.Typer(no_args_is_help=True, help="API tokens")
ov_app = typer.Typer(no_args_is_help=True, help="Organization validation of OV/EV orders")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
app.add_typer(account_app, name="account")
app.add_typer(token_app, name="token")
app.add_typer(ov_app, name="ov")
app.add_typer(db_app, name="db")
upstream_app = typer.Typer(no_args_is_help=True, help="Upstream ACME CAs")
app.add_typer(upstream_app, name="upstream")
dns_app = typer.Typer(no_args_is_help=True, help="The DNS zone of dns-01 delegations")
app.add_typer(dns_app, name="dns")

out = Console()
err = Console(stderr=True)


def _db() -> Database:
    return bootstrap.open_database(Settings())


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def _server_app(settings: Settings, ctx: OrdersContext) -> FastAPI:
    api = create_app(
        ctx, worker=settings.worker_in_process, poll_seconds=settings.worker_poll_seconds
    )
    try:
        limits = ApiLimits.from_settings(settings)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    configure_limits(api, ApiGuard(limits))
    return api


def server_app_from_environment() -> FastAPI:
    """The ASGI app of one process of `serve --workers N` (uvicorn imports it by name): the
    parent already migrated the database and created the CA; settings come from the same
    environment and TOML file."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    return _server_app(settings, bootstrap.build_context(settings, SystemClock()))


def _share_metrics_between_processes() -> str | None:
    """prometheus_client multiprocess mode for the server processes of this host: a fresh
    directory (stale files would add old counts), removed by the caller at exit."""
    if os.environ.get(metrics.MULTIPROC_ENV):
        return None  # the operator's directory: theirs to clear between runs
    directory = tempfile.mkdtemp(prefix="certbroker-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = directory
    return directory


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (CERTBROKER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (CERTBROKER_PORT)")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port (PostgreSQL; each runs the in-process "
            "worker unless CERTBROKER_WORKER_IN_PROCESS=false)",
        ),
    ] = 1,
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
    _check_upstreams(ctx)
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
    api = _server_app(settings, ctx)
    if workers == 1:
        uvicorn.run(api, **uvicorn_options(settings))
        return
    # Each process builds its own app and connection pool from the same settings.
    ctx.db.dispose()
    metrics_dir = _share_metrics_between_processes()
    supervise: dict[str, Any] = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # A child answers the supervisor's ping only once it has imported everything and opened
        # the CA; on a busy host that takes longer than uvicorn's 5 s, which restarts it forever.
        supervise["timeout_worker_healthcheck"] = 60
    try:
        uvicorn.run(
            "certbroker.cli:server_app_from_environment",
            factory=True,
            workers=workers,
            **supervise,
            **uvicorn_options(settings),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Connection limits of `serve`. uvicorn has no header-read timeout: run it behind a proxy
    that has one (docs/SETTINGS.md); bodies have their own time limit (api/racent/decoding.py)."""
    http: str | type[http_protocol.LimitedHttpToolsProtocol] = "h11"
    if settings.http_parser == "httptools":
        http_protocol.check_uvicorn()  # refuse to start rather than serve without a head limit
        http = http_protocol.LimitedHttpToolsProtocol
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "http": http,
        "loop": "auto",  # uvloop when installed
        "timeout_keep_alive": settings.http_keepalive_seconds,
        "limit_concurrency": settings.http_max_concurrency,
        # The head limit of both parsers (LimitedHttpToolsProtocol reads it from uvicorn's Config).
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
    }


@app.command()
def worker(
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve this process's Prometheus metrics on this port")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics port")] = "127.0.0.1",
) -> None:
    """Run a worker process alone: DCV checks, issuance, expiry (stops on SIGTERM/SIGINT).

    Any number may run against one PostgreSQL; work is claimed with leases."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    ctx = bootstrap.build_context(settings, SystemClock())
    _check_upstreams(ctx)
    if metrics_port is not None:
        metrics.serve_metrics(metrics_port, metrics_host)
    out.print("certbroker worker running", highlight=False)
    run_until_signalled(ctx, poll_seconds=settings.worker_poll_seconds)


def _check_upstreams(ctx: OrdersContext) -> None:
    """At start-up: register or find each upstream account. A failure is logged as an error
    (upstream_accounts logs it) and that upstream's products answer -6; the server still runs."""
    for result in upstream_accounts.check_all(ctx):
        (out if result.ok else err).print(f"upstream {result.line()}", highlight=False)


@upstream_app.command("check")
def upstream_check(
    name: Annotated[str | None, typer.Argument(help="One upstream (default: all)")] = None,
) -> None:
    """Register with EAB, or find the existing account, at each upstream; one line each."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    ctx = bootstrap.build_context(settings, SystemClock())
    if not ctx.upstreams:
        raise _fail("no upstreams configured ([upstreams.NAME] in the TOML file)")
    if name is not None and name not in ctx.upstreams:
        raise _fail(f"unknown upstream {name!r}; configured: {', '.join(sorted(ctx.upstreams))}")
    results = upstream_accounts.check_all(ctx, [name] if name else None)
    for result in results:
        out.print(result.line(), highlight=False, soft_wrap=True)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)


@dns_app.command("serve")
def dns_serve() -> None:
    """Run the built-in authoritative DNS server of [dcv_delegation] zone on UDP and TCP at
    listen_host:listen_port (docs/DNS-DELEGATION.md); stops on SIGTERM/SIGINT."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        server = serving.make_server(
            settings.dcv_delegation, bootstrap.open_database(settings), SystemClock()
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    asyncio.run(serving.serve_until_signalled(server))


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


keys_app = typer.Typer(no_args_is_help=True, help="Master keys that encrypt secrets at rest")
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
def keys_list() -> None:
    """Key ids of the ring, the current one, and how many stored values each protects."""
    settings = Settings()
    try:
        ring = keyring.open_ring(settings)
    except keyring.KeyRingError as exc:
        raise _fail(str(exc)) from exc
    counts = keyring.usage(_db())
    table = Table("key id", "current", "values protected")
    for key_id in sorted(ring.key_ids | set(counts)):
        table.add_row(
            key_id, "yes" if key_id == ring.current_key_id else "", str(counts.get(key_id, 0))
        )
    out.print(table)


def _reencrypt(batch_size: int) -> None:
    try:
        ring = keyring.open_ring(Settings())
    except keyring.KeyRingError as exc:
        raise _fail(str(exc)) from exc

    def progress(column: str, rows: int) -> None:
        out.print(f"  {column}: {rows} re-encrypted", highlight=False)

    try:
        report = keyring.reencrypt(_db(), ring, batch_size=batch_size, on_batch=progress)
    except keyring.KeyRingError as exc:
        raise _fail(str(exc)) from exc
    out.print(
        f"{report.total} values now under master key {ring.current_key_id} "
        f"({report.batches} batches)",
        highlight=False,
    )


BatchSize = Annotated[int, typer.Option(min=1, max=10_000, help="Rows per transaction")]


@keys_app.command("rotate")
def keys_rotate(batch_size: BatchSize = 100) -> None:
    """Make a new current master key, then re-encrypt everything with it (server may run)."""
    try:
        key_id = keyring.add_current_key(Settings())
    except keyring.KeyRingError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"master key {key_id} is now current; re-encrypting", highlight=False)
    _reencrypt(batch_size)
    out.print("old keys stay in the ring for decryption until `certbroker keys retire ID`")


@keys_app.command("reencrypt")
def keys_reencrypt(batch_size: BatchSize = 100) -> None:
    """Re-encrypt every stored secret under the current master key (e.g. after an env change)."""
    _reencrypt(batch_size)


@keys_app.command("retire")
def keys_retire(key_id: str) -> None:
    """Remove an old master key from the ring once nothing is encrypted with it."""
    try:
        keyring.retire_key(Settings(), _db(), key_id)
    except keyring.KeyRingError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"master key {key_id} retired", highlight=False)


audit_app = typer.Typer(no_args_is_help=True, help="The audit log of state-changing API calls")
app.add_typer(audit_app, name="audit")


@audit_app.command("list")
def audit_list(
    account: Annotated[str | None, typer.Option(help="Account name or id")] = None,
    cert_id: Annotated[str | None, typer.Option(help="Only calls about this certId")] = None,
    limit: Annotated[int, typer.Option(min=1, max=audit.MAX_LIST, help="Newest N")] = 50,
) -> None:
    """Newest entries first: time (UTC), account, token, source address, action, certId, code."""
    db = _db()
    try:
        with db.transaction() as session:
            account_id = accounts.find_account(session, account).id if account else None
            rows = audit.list_entries(session, account_id=account_id, cert_id=cert_id, limit=limit)
    except accounts.UnknownAccountError as exc:
        raise _fail(str(exc)) from exc
    # One line per entry, key=value: easy to grep and to read in a terminal of any width.
    for row in rows:
        out.print(
            f"{row.created_at:%Y-%m-%d %H:%M:%S} account={_or_dash(row.account_id)} "
            f"token={_or_dash(row.token_id)} address={row.source_address or '-'} "
            f"action={row.action} certId={_or_dash(row.cert_id)} code={row.code}",
            highlight=False,
            soft_wrap=True,
        )


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def main() -> None:
    app()


# --- webhooks (notify/webhooks.py; docs/API.md "Webhooks") ---------------------------------

webhook_app = typer.Typer(no_args_is_help=True, help="Webhooks: events POSTed to an account's URL")
app.add_typer(webhook_app, name="webhook")


def _account_id(db: Database, account: str) -> int:
    try:
        with db.transaction() as session:
            return accounts.find_account(session, account).id
    except accounts.UnknownAccountError as exc:
        raise _fail(str(exc)) from exc


@webhook_app.command("set")
def webhook_set(
    account: Annotated[str, typer.Argument(help="Account name or id")],
    url: Annotated[str, typer.Argument(help="Callback URL (http or https, public address)")],
    secret: Annotated[
        str | None,
        typer.Option(help="Signing secret; by default one is generated (and printed once)"),
    ] = None,
    rotate_secret: Annotated[
        bool, typer.Option(help="Replace the current secret by a new generated one")
    ] = False,
) -> None:
    """Set an account's webhook URL and enable it (only later events are delivered)."""
    ctx = bootstrap.build_context(Settings())
    account_id = _account_id(ctx.db, account)
    try:
        view = webhook_settings.set_webhook(
            ctx, account_id, url, secret, rotate_secret=rotate_secret
        )
    except ApiError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"webhook of {account}: {view.url} (enabled)", highlight=False)
    if view.secret is not None:
        out.print("Signing secret (shown only now):")
        out.print(view.secret, soft_wrap=True, highlight=False)


@webhook_app.command("show")
def webhook_show(account: Annotated[str, typer.Argument(help="Account name or id")]) -> None:
    """An account's webhook (never its secret)."""
    ctx = bootstrap.build_context(Settings())
    account_id = _account_id(ctx.db, account)
    view = webhook_settings.show_webhook(ctx, account_id)
    if view is None:
        out.print(f"{account} has no webhook")
        return
    state = "enabled" if view.enabled else f"disabled since {view.disabled_at:%Y-%m-%d %H:%M:%S}"
    out.print(f"webhook of {account}: {view.url} ({state})", highlight=False)


@webhook_app.command("disable")
def webhook_disable(account: Annotated[str, typer.Argument(help="Account name or id")]) -> None:
    """Stop an account's webhook; its pending deliveries are cancelled."""
    ctx = bootstrap.build_context(Settings())
    account_id = _account_id(ctx.db, account)
    if webhook_settings.disable_webhook(ctx, account_id) is None:
        raise _fail(f"{account} has no webhook")
    out.print(f"webhook of {account} disabled")


@webhook_app.command("deliveries")
def webhook_deliveries(
    account: Annotated[str, typer.Argument(help="Account name or id")],
    cert_id: Annotated[str | None, typer.Option(help="Only events of this certId")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
) -> None:
    """The delivery log of an account: one line per event, newest first."""
    ctx = bootstrap.build_context(Settings())
    account_id = _account_id(ctx.db, account)
    try:
        items = webhook_settings.list_deliveries(ctx, account_id, cert_id, limit)
    except ApiError as exc:
        raise _fail(str(exc)) from exc
    table = Table(
        "event", "type", "certId", "status", "attempts", "last attempt (UTC)", "last error"
    )
    for item in items:
        table.add_row(
            item.event_id,
            item.event_type,
            item.cert_id or "",
            item.state,
            str(item.attempts),
            "" if item.last_attempt_at is None else f"{item.last_attempt_at:%Y-%m-%d %H:%M:%S}",
            item.last_error or "",
        )
    out.print(table)


policy_app = typer.Typer(
    no_args_is_help=True, help="Issuance policy: which names and keys may be certified"
)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(names: list[str]) -> None:
    """Say for each name whether this CA may certify it, and by which rule it may not."""
    settings = Settings()
    name_policy, _weak = bootstrap.issuance_policy(settings)
    table = Table("name", "canonical", "verdict")
    refused = False
    for raw in names:
        problem = name_refusal(raw, name_policy)
        if problem is None:
            table.add_row(raw, well_formed(raw), "[green]may be certified[/green]")
        else:
            refused = True
            table.add_row(raw, "-", f"[red]{problem.rule}[/red]: {problem.reason}")
    out.print(table)
    out.print(f"Public Suffix List: {public_suffixes.list_file()}")
    if refused:
        raise typer.Exit(code=1)


@policy_app.command("block-key")
def policy_block_key(
    pem_file: Annotated[
        typer.FileBinaryRead, typer.Argument(help="PEM certificate, CSR, public or private key")
    ],
    note: Annotated[str, typer.Option(help="Why the key is compromised")] = "",
) -> None:
    """Refuse a key for every later order, reissue and CSR (BR 6.1.1.3)."""
    try:
        blocked = compromised_keys.block_key(_db(), pem_file.read(), note, SystemClock().now())
    except ValueError as exc:
        raise _fail(str(exc)) from None
    state = "added to" if blocked.added else "already on"
    out.print(f"key SPKI SHA-256 {blocked.spki_sha256} {state} the compromised-key list")


@policy_app.command("blocked-keys")
def policy_blocked_keys() -> None:
    """The compromised-key list."""
    table = Table("SPKI SHA-256", "source", "note", "added (UTC)")
    for digest, source, note, added in compromised_keys.list_blocked(_db()):
        table.add_row(digest, source, note, f"{added:%Y-%m-%d %H:%M}")
    out.print(table)
