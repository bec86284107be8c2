"""Free products (trials, priced 0) are limited per account and day (orders/free_orders.py)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from tests.conftest import Service
from tests.integration.test_postgres_concurrency import all_at_once

LIMIT = 2
KEY = generate_private_key("ec256")


def place(service: Service, name: str, product: str = "sectigo-free-trial") -> dict[str, Any]:
    params = {
        "server": "nginx",
        "csr": build_csr(KEY, [name]).pem,
        "domainInfo": [{"domainName": name, "dcvMethod": "HTTP_CSR_HASH"}],
    }
    return service.call("place", productCode=product, years=1, params=params)


@pytest.fixture
def limited(service: Service) -> Service:
    service.ctx.policy = dataclasses.replace(service.ctx.policy, free_orders_per_day=LIMIT)
    service.topup(100)
    return service


def test_one_free_order_over_the_daily_limit_is_refused_and_stores_nothing(
    limited: Service,
) -> None:
    service = limited
    for i in range(LIMIT):
        assert place(service, f"trial{i}.example.com")["code"] == 1
    counts, balance = service.counts(), service.balance()

    params = {
        "server": "nginx",
        "csr": build_csr(KEY, ["one-too-many.example.com"]).pem,
        "domainInfo": [{"domainName": "one-too-many.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    checked = service.call("validate", productCode="sectigo-free-trial", years=1, params=params)
    assert checked["code"] == -3, "validate runs every check of place"
    refused = place(service, "one-too-many.example.com")
    assert refused["code"] == -3, refused
    assert refused["errors"] == checked["errors"]
    assert f"limited to {LIMIT} orders per account and day" in refused["errors"]
    assert (service.counts(), service.balance()) == (counts, balance), "no order, no charge"

    paid = place(service, "paid.example.com", product="comodo-ssl")
    assert paid["code"] == 1, "orders that cost money are not limited"
    other_id, other_token = service.new_account("other")
    service.topup(10, account_id=other_id)
    params = {
        "server": "nginx",
        "csr": build_csr(KEY, ["other.example.com"]).pem,
        "domainInfo": [{"domainName": "other.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    other = service.call(
        "place", token=other_token, productCode="sectigo-free-trial", years=1, params=params
    )
    assert other["code"] == 1, "the allowance is per account"


def test_the_allowance_comes_back_on_the_next_day_of_the_api_zone(limited: Service) -> None:
    service = limited
    for i in range(LIMIT):
        assert place(service, f"day1-{i}.example.com")["code"] == 1
    # START is 17:00 in UTC+8: the API's day ends 7 hours later.
    service.advance(timedelta(hours=6, minutes=59))
    assert place(service, "still-today.example.com")["code"] == -3
    service.advance(timedelta(minutes=1))
    assert place(service, "tomorrow.example.com")["code"] == 1


def test_concurrent_free_orders_never_exceed_the_limit(limited: Service) -> None:
    codes = all_at_once(6, lambda i: place(limited, f"race{i}.example.com")["code"])
    assert sorted(codes) == [-3] * (6 - LIMIT) + [1] * LIMIT
    assert limited.counts()[0] == LIMIT
