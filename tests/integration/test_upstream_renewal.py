"""Automatic subscription reissues of upstream ACME certificates (RFC 8555; ARI, RFC 9773):
a 2-year subscription on a dns-01 product is renewed by a new upstream order, free and without
the customer, inside the ARI window when the upstream offers renewalInfo (Debian's Pebble 2.4
does not: the test proxy adds it), else at the lead time before the certificate ends.

Timing is the injected clock's: nothing waits on wall time except Pebble's own work.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from sqlalchemy import select

from certbroker.issuance.acme_upstream import ari_cert_id
from certbroker.orders import upstream_accounts
from certbroker.store.models import Event, Order, UpstreamOrder
from tests.conftest import START, Service
from tests.helpers.acme_proxy import AcmeProxy
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dcv_http_server import DcvHttpServer
from tests.helpers.pebble import Pebble
from tests.integration.test_upstream_acme import (
    WILD_PRODUCT,
    ZONE,
    _certificates,
    _charges,
    _service,
    _work_until,
)

VALIDITY = timedelta(days=90)  # as Let's Encrypt's classic profile; Pebble's default is 5 years


@pytest.fixture
def short_pebble(tmp_path: Path, dns_server: ChallTestSrv, site: DcvHttpServer) -> Iterator[Pebble]:
    with Pebble(
        tmp_path / "pebble",
        http_port=site.port,
        dns_server=dns_server.resolver,
        validity_seconds=int(VALIDITY.total_seconds()),
    ) as p:
        yield p


@pytest.fixture
def ari_proxy(short_pebble: Pebble) -> Iterator[AcmeProxy]:
    found = AcmeProxy(
        short_pebble.port, short_pebble.ca_bundle, short_pebble.tls_cert, short_pebble.tls_key
    )
    found.ari = True
    yield found
    found.close()


def _two_year_dns(service: Service, name: str) -> str:
    assert [r.ok for r in upstream_accounts.check_all(service.ctx)] == [True]
    service.topup(500)
    params = {
        "server": "nginx",
        "domainInfo": [{"domainName": name, "dcvMethod": "CNAME_CSR_HASH"}],
    }
    placed = service.call("place", productCode=WILD_PRODUCT, years="2", params=params)
    assert placed["code"] == 1, placed
    data: dict[str, Any] = placed["data"]
    service.dns_server.set_cname(f"_acme-challenge.{name}", data["dcvInfo"][name]["DCVdnsValue"])
    assert data["dcvInfo"][name]["DCVdnsValue"].endswith(f".{ZONE}.")
    return str(data["certId"])


def _order(service: Service, cert_id: str) -> tuple[datetime | None, datetime | None]:
    with service.ctx.db.read() as session:
        order = session.scalars(select(Order).where(Order.cert_id == cert_id)).one()
        return order.renew_due_at, order.due_at


def _renew(service: Service, cert_id: str, due: datetime) -> str:
    """Move the clock to `due`, run a pass: the subscription makes the successor order."""
    service.clock.advance(due - service.clock.now())
    service.work()
    assert service.call("collect", certId=cert_id)["status"] == "REISSUED"
    with service.ctx.db.read() as session:
        event = session.scalars(
            select(Event).where(Event.type == "certificate.reissued").order_by(Event.id.desc())
        ).first()
    assert event is not None and event.payload["kind"] == "renew"
    return str(event.payload["newCertId"])


def test_renewal_inside_the_ari_window_sends_replaces_and_completes_without_the_customer(
    tmp_path: Path,
    short_pebble: Pebble,
    ari_proxy: AcmeProxy,
    dns_server: ChallTestSrv,
    site: DcvHttpServer,
) -> None:
    start = START + timedelta(days=40)
    ari_proxy.window = (
        start.isoformat().replace("+00:00", "Z"),
        (start + timedelta(days=2)).isoformat().replace("+00:00", "Z"),
    )
    gen = cast(
        Generator[Service, None, None],
        _service(
            tmp_path,
            short_pebble,
            dns_server,
            site,
            hmac_key=short_pebble.eab_hmac_key,
            delegation=True,
            directory=ari_proxy.directory,
        ),
    )
    service = next(gen)
    name = "renew-ari.example.com"
    cert_id = _two_year_dns(service, name)
    try:
        first = _work_until(service, cert_id, "COMPLETE")["data"]
        leaf = x509.load_pem_x509_certificate(first["certificate"].encode())
        cert_id_ari = ari_cert_id(leaf)
        assert ari_proxy.renewal_info_asked == [cert_id_ari]
        renew_due, due = _order(service, cert_id)
        assert renew_due == start  # the window's start, by the injected clock
        assert due is not None and due > START + timedelta(days=700)
        assert ari_proxy.replaces_seen == [None]  # the first order replaces nothing

        successor = _renew(service, cert_id, start)
        renewed = _work_until(service, successor, "COMPLETE")["data"]
        assert renewed["certificate"] != first["certificate"]
        # RFC 9773 4.2: the renewal's newOrder named the certificate it replaces.
        assert ari_proxy.replaces_seen == [None, cert_id_ari]
        assert _certificates(service) == 2
        assert len(_charges(service)) == 1  # free
        with service.ctx.db.read() as session:
            rows = session.scalars(select(UpstreamOrder.replaces).order_by(UpstreamOrder.id))
            assert list(rows) == [None, cert_id_ari]
        # The renewal is itself scheduled in the (test's) window: the subscription goes on.
        assert _order(service, successor)[0] is not None
    finally:
        service.dns_server.clear_cname(f"_acme-challenge.{name}")
        gen.close()


def test_renewal_without_renewal_info_comes_at_the_lead_time(
    tmp_path: Path, short_pebble: Pebble, dns_server: ChallTestSrv, site: DcvHttpServer
) -> None:
    gen = cast(
        Generator[Service, None, None],
        _service(
            tmp_path,
            short_pebble,
            dns_server,
            site,
            hmac_key=short_pebble.eab_hmac_key,
            delegation=True,
        ),
    )
    service = next(gen)
    name = "renew-lead.example.com"
    cert_id = _two_year_dns(service, name)
    try:
        first = _work_until(service, cert_id, "COMPLETE")["data"]
        leaf = x509.load_pem_x509_certificate(first["certificate"].encode())
        renew_due, _due = _order(service, cert_id)
        lead = service.ctx.policy.renew_lead
        expected = (leaf.not_valid_after_utc - lead).replace(microsecond=0)
        assert renew_due is not None and renew_due.astimezone(UTC) == expected
        # Not yet due a second before.
        service.clock.advance(renew_due - timedelta(seconds=1) - service.clock.now())
        service.work()
        assert service.call("collect", certId=cert_id)["status"] == "COMPLETE"

        successor = _renew(service, cert_id, renew_due)
        renewed = _work_until(service, successor, "COMPLETE")["data"]
        assert renewed["certificate"] != first["certificate"]
        assert _certificates(service) == 2
        assert len(_charges(service)) == 1
        with service.ctx.db.read() as session:
            # Without renewalInfo `replaces` is stored but never sent (RFC 9773 4.2).
            assert session.scalars(select(UpstreamOrder.status)).all() == [
                "downloaded",
                "downloaded",
            ]
    finally:
        service.dns_server.clear_cname(f"_acme-challenge.{name}")
        gen.close()
