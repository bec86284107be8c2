"""place without a CSR through the API takes its key from the pool made at start-up (P8)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select

from certbroker import bootstrap
from certbroker.app import create_app
from certbroker.clock import ManualClock
from certbroker.orders import accounts, ledger
from certbroker.pki.key_pool import KeyPool
from certbroker.pki.keys import PrivateKey, public_key_matches
from certbroker.settings import Settings
from certbroker.store.models import Order
from tests.conftest import START

PARAMS = {
    "server": "nginx",
    "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
}


class RecordingPool(KeyPool):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.taken: list[PrivateKey | None] = []

    def take(self, spec: str) -> PrivateKey | None:
        key = super().take(spec)
        self.taken.append(key)
        return key


def _call(client: TestClient, token: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    body = {"api_token": token}
    body.update({k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()})
    response = client.post(f"/ssl/{endpoint}", data=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_place_without_csr_uses_a_pooled_key_once_and_the_pool_stops_with_the_app(
    tmp_path: Path,
) -> None:
    clock = ManualClock(START)
    settings = Settings(data_dir=tmp_path / "data", key_pool_size=2)
    ctx = bootstrap.build_context(settings, clock)
    assert isinstance(ctx.key_pool, KeyPool) and ctx.key_pool.size == 2
    pool = RecordingPool(2)
    ctx.key_pool = pool
    first = bootstrap.ensure_first_account(ctx)
    assert first is not None
    with ctx.db.transaction() as session:
        ledger.post(
            session,
            account_id=accounts.find_account(session, first.name).id,
            amount_cents=100_00,
            kind="topup",
            op_key="topup:key-pool",
            now=clock.now(),
        )

    with TestClient(create_app(ctx, worker=False)) as client:
        # Start-up filled the default key type (rsa2048) without any request.
        deadline = time.monotonic() + 120
        while pool.available("rsa2048") < 2:
            if time.monotonic() > deadline:
                pytest.fail("the pool was not filled at start-up")
            time.sleep(0.05)
        pids = pool.process_ids()
        assert pids

        order_fields: dict[str, Any] = {"productCode": "comodo-ssl", "years": 1, "params": PARAMS}
        checked = _call(client, first.token, "validate", **order_fields)
        assert checked["code"] == 1, checked
        assert pool.taken == [] and pool.available("rsa2048") == 2  # validate takes no key

        cert_ids = []
        for _ in range(2):
            placed = _call(client, first.token, "place", **order_fields)
            assert placed["code"] == 1, placed
            cert_ids.append(placed["data"]["certId"])
        assert len(pool.taken) == 2 and all(key is not None for key in pool.taken)

        with ctx.db.transaction() as session:
            for cert_id, key in zip(cert_ids, pool.taken, strict=True):
                order = session.scalar(select(Order).where(Order.cert_id == cert_id))
                assert order is not None and key is not None
                csr = x509.load_pem_x509_csr(order.csr_pem.encode())
                assert public_key_matches(key, csr.public_key())
        first_key, second_key = pool.taken
        assert first_key is not None and second_key is not None
        assert not public_key_matches(first_key, second_key.public_key())

    # The lifespan ended: the pool process is gone (joined: not even a zombie).
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids), pids
    assert pool.process_ids() == []
    assert pool.take("rsa2048") is None
