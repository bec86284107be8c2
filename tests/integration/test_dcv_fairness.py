"""Fair validation: one account's hanging validation hosts do not hold up another account's
orders, and the caps per account and per target hold (orders/dcv.py claim_due_names,
worker/dcv_checks.py).

Addresses: account A's names resolve to 127.0.0.3, where a server accepts connections and never
answers; every other name resolves to 127.0.0.1, the test's DCV web server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from certbroker.app import create_app
from certbroker.orders import dcv
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.models import OrderName
from certbroker.validation.results import CheckResult
from certbroker.worker.runner import Worker
from tests.conftest import Service
from tests.helpers.hanging_server import HangingServer

HANGING_IP = "127.0.0.3"
KEY = generate_private_key("ec256")


def order_params(names: list[str], csr: str | None = None) -> dict[str, Any]:
    return {
        "server": "nginx",
        "csr": csr or build_csr(KEY, names).pem,
        "domainInfo": [{"domainName": n, "dcvMethod": "HTTP_CSR_HASH"} for n in names],
    }


def place(
    service: Service,
    names: list[str],
    token: str | None = None,
    client: TestClient | None = None,
    csr: str | None = None,
) -> dict[str, Any]:
    body = {
        "api_token": token or service.token,
        "productCode": "sectigo-multi-domain" if len(names) > 1 else "comodo-ssl",
        "years": "1",
        "params": order_params(names, csr),
    }
    response = (client or service.client).post("/ssl/place", json=body)
    placed: dict[str, Any] = response.json()
    assert placed["code"] == 1, placed
    return placed


@contextmanager
def hanging_names(service: Service, names: list[str]) -> Iterator[HangingServer]:
    """`names` resolve to a server on the DCV port that never answers."""
    for name in names:
        service.dns_server.add_a(name, HANGING_IP)
    try:
        with HangingServer(HANGING_IP, service.site.port) as server:
            yield server
    finally:
        for name in names:
            service.dns_server.clear_a(name)


def wait_for(condition: Any, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.01)


def test_150_hanging_hosts_of_one_account_do_not_delay_another_accounts_order(
    service: Service,
) -> None:
    ctx = service.ctx
    # A's checks hang for longer than B may wait in all.
    ctx.policy = dataclasses.replace(ctx.policy, dcv_timeout_seconds=10)
    hanging = [f"h{i}.tenant-a.example.com" for i in range(150)]
    service.topup(5000)
    b_id, b_token = service.new_account("tenant-b")
    service.topup(100, account_id=b_id)
    # B's file is on the site before B places: the worker checks as soon as the order exists.
    ready = "ready.tenant-b.example.com"
    csr = build_csr(KEY, [ready]).pem  # signatures differ each time: one CSR, one file
    block = dcv.dcv_block(csr, None, ctx.policy.dcv_ca_domain)
    service.site.serve_file(block.file_name, block.file_content)

    with (
        hanging_names(service, hanging) as server,
        TestClient(create_app(ctx, worker=True, poll_seconds=1.0)) as client,
    ):
        place(service, hanging[:75], client=client)
        place(service, hanging[75:], client=client)
        cap = ctx.policy.dcv_max_per_account
        wait_for(lambda: server.open >= cap, f"{cap} of A's checks hanging")

        placed_at = time.monotonic()
        cert_id = place(service, [ready], b_token, client, csr)["data"]["certId"]
        while True:
            answer = client.post(
                "/ssl/collect", data={"api_token": b_token, "certId": cert_id}
            ).json()
            elapsed = time.monotonic() - placed_at
            if answer["status"] == "COMPLETE" or elapsed > 3:
                break
            time.sleep(0.02)
        assert answer["status"] == "COMPLETE", (elapsed, answer)
        assert server.open == cap, "A's checks were still hanging meanwhile"
        assert server.max_open <= cap
    with ctx.db.read() as session:
        a_rows = session.scalars(select(OrderName).where(OrderName.name.in_(hanging))).all()
        assert not any(row.verified_at for row in a_rows)
        assert not any(row.lease_owner for row in a_rows), "stopped checks gave their names back"


def test_the_per_account_cap_holds_at_the_hanging_server(service: Service) -> None:
    ctx = service.ctx
    ctx.policy = dataclasses.replace(ctx.policy, dcv_timeout_seconds=0.5, dcv_max_per_account=3)
    names = [f"c{i}.capped.example.com" for i in range(10)]
    service.topup(500)

    def all_checked() -> bool:
        with ctx.db.read() as session:
            rows = session.scalars(select(OrderName).where(OrderName.name.in_(names))).all()
            return all(row.attempts == 1 for row in rows)

    async def scenario() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(Worker(ctx, poll_seconds=0.1).run_forever(stop))
        try:
            deadline = time.monotonic() + 30
            while not await asyncio.to_thread(all_checked):
                assert time.monotonic() < deadline and not worker.done()
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await worker

    with hanging_names(service, names) as server:
        place(service, names)
        asyncio.run(scenario())
        assert server.accepted == len(names), "every name was checked once"
        assert server.max_open == 3, "never more than the cap of one account at once"
    with ctx.db.read() as session:
        rows = session.scalars(select(OrderName).where(OrderName.name.in_(names))).all()
        assert all("timed out" in (row.last_result or "") for row in rows), "a failure each"


def test_a_claim_takes_every_accounts_first_names_first_within_the_caps(service: Service) -> None:
    ctx = service.ctx
    ctx.policy = dataclasses.replace(ctx.policy, dcv_max_per_account=5, dcv_max_per_target=1)
    service.topup(500)
    place(service, [f"a{i}.big.example.com" for i in range(30)])
    b_id, b_token = service.new_account("small")
    service.topup(100, account_id=b_id)
    place(service, ["shared.small.example.com"], token=b_token)
    place(service, ["shared.small.example.com", "own.small.example.com"], token=b_token)

    def accounts(checks: list[dcv.NameCheck]) -> Counter[int]:
        return Counter(check.account_id for check in checks)

    first = dcv.claim_due_names(ctx, "w", limit=2)
    assert accounts(first) == Counter({service.account_id: 1, b_id: 1}), "one each first"
    rest = dcv.claim_due_names(ctx, "w")
    claimed = first + rest
    assert accounts(claimed) == Counter({service.account_id: 5, b_id: 2})
    assert Counter(c.name for c in claimed)["shared.small.example.com"] == 1, "target cap"
    assert dcv.claim_due_names(ctx, "w") == [], "the caps count names already leased"

    done = next(c for c in claimed if c.account_id == service.account_id)
    dcv.record_results(ctx, "w", [(done, CheckResult(ok=False, detail="404"))])
    [again] = dcv.claim_due_names(ctx, "w")
    assert again.account_id == service.account_id, "a recorded result frees its slot"
