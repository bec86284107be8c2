"""CPU per call of `place` and `collect` inside one process, without sockets: the handler alone
(`routes._serve`: authentication, the call, its audit row) and the whole ASGI app (body parsing,
dispatch, thread hand-over, envelope). The difference is what the web stack costs per request;
`bench.run` measures the same calls over HTTP, with uvicorn and a client in other processes.

    .venv/bin/python -m bench.handlers            # 300 orders, a fresh data directory
    .venv/bin/python -m bench.handlers --n 1000

Prints one line per figure (CPU ms per call, `time.process_time`); writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.parse
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bench.certbroker_e2e import PRODUCT
from bench.common import make_csr


def _cpu_ms(action: Callable[[], object], runs: int) -> float:
    action()  # warm-up
    started = time.process_time()
    for _ in range(runs):
        action()
    return 1000 * (time.process_time() - started) / runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handlers", description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="orders placed, then collected")
    args = parser.parse_args(argv)

    from certbroker import bootstrap, logs
    from certbroker.api.limits import ApiGuard, ApiLimits
    from certbroker.api.racent import envelope, routes
    from certbroker.api.racent.endpoints import ENDPOINTS
    from certbroker.app import create_app
    from certbroker.orders import ledger
    from certbroker.settings import Settings

    logs.configure("WARNING", "json")
    data_dir = Path(tempfile.mkdtemp(prefix="certbroker-handlers-"))
    ctx = bootstrap.build_context(Settings(data_dir=data_dir, key_pool_size=0))
    first = bootstrap.ensure_first_account(ctx)
    assert first is not None
    with ctx.db.transaction() as session:
        ledger.post(
            session,
            account_id=1,
            amount_cents=10**10,
            kind="topup",
            op_key="bench:handlers",
            now=ctx.clock.now(),
        )
    guard = ApiGuard(ApiLimits(per_token=None, per_address=None))
    by_name = {endpoint.name: endpoint for endpoint in ENDPOINTS}
    key = ec.generate_private_key(ec.SECP256R1())
    names = iter(f"h{i}.shop.example.com" for i in range(10 * args.n + 10))

    def place_fields() -> dict[str, str]:
        name = next(names)
        params = {
            "server": "nginx",
            "csr": make_csr(key, [name]),
            "domainInfo": [{"domainName": name, "dcvMethod": "HTTP_CSR_HASH"}],
        }
        return {
            "api_token": first.token,
            "productCode": PRODUCT,
            "years": "1",
            "params": json.dumps(params),
        }

    def serve(endpoint: str, fields: dict[str, Any]) -> dict[str, Any]:
        caller = routes._Caller("127.0.0.1")
        if hasattr(routes, "_serve"):
            data, extra = routes._serve(ctx, guard, by_name[endpoint], fields, caller)
        else:  # trees before 2026-12-02: the call, then its audit row (what `handle` did)
            data, extra = routes._run(ctx, guard, by_name[endpoint], fields, caller)
            if routes.audited(by_name[endpoint]):
                routes._audit(ctx, by_name[endpoint], caller, fields, data, 1)
        envelope.success(data, **extra)
        return dict(data)

    # CSRs are made before the clock starts: they are the client's cost.
    placing = [place_fields() for _ in range(args.n)]
    cert_ids: list[str] = []
    place_ms = _cpu_ms(lambda: cert_ids.append(serve("place", placing.pop())["certId"]), args.n - 1)
    collect_ms = _cpu_ms(
        lambda: serve("collect", {"api_token": first.token, "certId": cert_ids[0]}), args.n
    )

    app = create_app(ctx, worker=False)
    routes.configure_limits(app, guard)

    async def asgi(path: str, fields: dict[str, str]) -> int:
        body = urllib.parse.urlencode(fields).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        delivered = False
        status = 0

        async def receive() -> MutableMapping[str, Any]:
            nonlocal delivered
            if delivered:
                await asyncio.sleep(3600)  # never: the app has read the whole body
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])

        await app(scope, receive, send)
        return status

    async def over_asgi() -> tuple[float, float]:
        fields = [place_fields() for _ in range(args.n)]
        started = time.process_time()
        for item in fields:
            await asgi("/ssl/place", item)
        place = 1000 * (time.process_time() - started) / len(fields)
        collect_fields = {"api_token": first.token, "certId": cert_ids[0]}
        started = time.process_time()
        for _ in range(args.n):
            await asgi("/ssl/collect", collect_fields)
        return place, 1000 * (time.process_time() - started) / args.n

    asgi_place_ms, asgi_collect_ms = asyncio.run(over_asgi())
    ctx.db.dispose()
    print(f"handler  place (with CSR)   {place_ms:7.3f} ms CPU")
    print(f"handler  collect (PENDING)  {collect_ms:7.3f} ms CPU")
    print(f"ASGI app place (with CSR)   {asgi_place_ms:7.3f} ms CPU")
    print(f"ASGI app collect (PENDING)  {asgi_collect_ms:7.3f} ms CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
