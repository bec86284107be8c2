"""Hostile and broken validation set-ups (issue 3): each leaves the order PENDING with a precise
per-domain error in collect, and a later re-check passes once the fault is fixed.

Addresses: the customer's site is 127.0.0.2 (the only network the operator allows here),
127.0.0.1 stands for a forbidden loopback target, and 127.0.0.3 hosts a server that never answers.
DNS comes from a small authoritative server of the test's own, so NXDOMAIN is real.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from certbroker import bootstrap
from certbroker.api.limits import ApiGuard, ApiLimits
from certbroker.api.racent.routes import configure_limits
from certbroker.app import create_app
from certbroker.clock import ManualClock
from certbroker.orders import accounts
from certbroker.settings import Settings
from tests.conftest import START, Service
from tests.helpers.dcv_http_server import PKI_VALIDATION_DIR, DcvHttpServer, Route
from tests.helpers.dns_records import TinyDnsServer
from tests.helpers.smtp_sink import SmtpSink

SITE_IP, FORBIDDEN_IP, SILENT_IP = "127.0.0.2", "127.0.0.1", "127.0.0.3"


@dataclass
class Zone:
    """The test's DNS data, rebuilt on the server after every change."""

    server: TinyDnsServer
    a: dict[str, str] = field(default_factory=dict)
    cname: dict[str, str] = field(default_factory=dict)
    caa: dict[str, str] = field(default_factory=dict)
    servfail: set[str] = field(default_factory=set)

    def apply(self) -> None:
        self.server.clear()
        for name, ip in self.a.items():
            self.server.add(name, "A", ip)
        for name, target in self.cname.items():
            self.server.add(name, "CNAME", target)
        for name, value in self.caa.items():
            self.server.add(name, "CAA", value)
        for name in self.servfail:
            self.server.set_servfail(name)


@dataclass
class World:
    service: Service
    zone: Zone
    site: DcvHttpServer
    tls_site: DcvHttpServer
    smtp: SmtpSink

    def place(self, name: str, method: str) -> dict[str, Any]:
        self.zone.a[name] = SITE_IP
        self.zone.apply()
        params = {"server": "nginx", "domainInfo": [{"domainName": name, "dcvMethod": method}]}
        placed = self.service.call("place", productCode="comodo-ssl", years=1, params=params)
        assert placed["code"] == 1, placed
        data: dict[str, Any] = placed["data"]
        return data


@pytest.fixture
def world(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[World]:
    with (
        TinyDnsServer() as dns,
        DcvHttpServer(SITE_IP) as site,
        DcvHttpServer(SITE_IP, tls=True) as tls_site,
    ):
        silent = socket.create_server((SILENT_IP, site.port))  # accepts, never answers
        settings = Settings(
            data_dir=tmp_path / "data",
            dcv_http_port=site.port,
            dcv_https_port=tls_site.port,
            smtp_port=smtp_sink.port,
            dcv_resolver=dns.resolver,
            dcv_allow_networks=["127.0.0.2/31"],
            dcv_timeout_seconds=1,
            caa_domains=["certbroker.example.com"],
        )
        clock = ManualClock(START)
        ctx = bootstrap.build_context(settings, clock)
        first = bootstrap.ensure_first_account(ctx)
        assert first is not None
        with ctx.db.transaction() as session:
            account_id = accounts.find_account(session, first.name).id
        app = create_app(ctx, worker=False)
        configure_limits(app, ApiGuard(ApiLimits(per_token=None, per_address=None)))
        try:
            with TestClient(app) as client:
                service = Service(ctx, client, clock, first.token, account_id, site, None)  # type: ignore[arg-type]
                service.topup(1000)
                yield World(service, Zone(dns), site, tls_site, smtp_sink)
        finally:
            silent.close()


Step = Callable[[World, str, dict[str, Any]], None]


def publish(world: World, name: str, data: dict[str, Any]) -> None:
    world.site.serve_file(data["DCVfileName"], data["DCVfileContent"])


def nothing(world: World, name: str, data: dict[str, Any]) -> None:
    pass


def path_of(data: dict[str, Any]) -> str:
    return PKI_VALIDATION_DIR + str(data["DCVfileName"])


def wrong_content(world: World, name: str, data: dict[str, Any]) -> None:
    world.site.serve_file(data["DCVfileName"], "0" * 64 + "\nsectigo.com\n")


def redirect_loop(world: World, name: str, data: dict[str, Any]) -> None:
    world.site.redirect(path_of(data), f"http://{name}:{world.site.port}{path_of(data)}")


def redirect_private(world: World, name: str, data: dict[str, Any]) -> None:
    world.site.redirect(path_of(data), f"http://10.0.0.1:{world.site.port}{path_of(data)}")


def redirect_8080(world: World, name: str, data: dict[str, Any]) -> None:
    world.site.redirect(path_of(data), f"http://{name}:8080{path_of(data)}")


def huge_file(world: World, name: str, data: dict[str, Any]) -> None:
    world.site.routes[path_of(data)] = Route(stream_bytes=10 * 1024 * 1024)


def never_answers(world: World, name: str, data: dict[str, Any]) -> None:
    world.zone.a[name] = SILENT_IP
    world.zone.apply()


def loopback(world: World, name: str, data: dict[str, Any]) -> None:
    world.zone.a[name] = FORBIDDEN_IP
    world.zone.apply()


def back_to_site(world: World, name: str, data: dict[str, Any]) -> None:
    world.zone.a[name] = SITE_IP
    world.zone.apply()
    publish(world, name, data)


def cname_right(world: World, name: str, data: dict[str, Any]) -> None:
    world.zone.servfail.clear()
    world.zone.cname[f"{data['DCVdnsHost']}.{name}"] = data["DCVdnsValue"] + "."
    world.zone.apply()


def cname_wrong(world: World, name: str, data: dict[str, Any]) -> None:
    world.zone.cname[f"{data['DCVdnsHost']}.{name}"] = "x.example.net."
    world.zone.apply()


def servfail(world: World, name: str, data: dict[str, Any]) -> None:
    world.zone.servfail.add(f"{data['DCVdnsHost']}.{name}")
    world.zone.apply()


def caa_other_ca(world: World, name: str, data: dict[str, Any]) -> None:
    publish(world, name, data)
    world.zone.caa[name] = '0 issue "letsencrypt.org"'
    world.zone.apply()


def caa_us(world: World, name: str, data: dict[str, Any]) -> None:
    world.zone.caa[name] = '0 issue "certbroker.example.com"'
    world.zone.apply()


CASES: list[tuple[str, str, Step, Step, str]] = [
    # (case, method, break, fix, fragment of the per-domain error)
    ("404", "HTTP_CSR_HASH", nothing, publish, "HTTP 404 at http://"),
    ("wrong content", "HTTP_CSR_HASH", wrong_content, publish, "content"),
    ("redirect loop", "HTTP_CSR_HASH", redirect_loop, publish, "redirect loop"),
    ("redirect to a private address", "HTTP_CSR_HASH", redirect_private, publish, "private"),
    ("redirect to port 8080", "HTTP_CSR_HASH", redirect_8080, publish, "8080"),
    ("10 MB file", "HTTP_CSR_HASH", huge_file, publish, "larger than 4096 bytes"),
    ("server never answers", "HTTP_CSR_HASH", never_answers, back_to_site, "timed out"),
    ("resolves to 127.0.0.1", "HTTP_CSR_HASH", loopback, back_to_site, "127.0.0.1"),
    (
        "CNAME to the wrong target",
        "CNAME_CSR_HASH",
        cname_wrong,
        cname_right,
        "points to x.example.net, expected",
    ),
    ("NXDOMAIN", "CNAME_CSR_HASH", nothing, cname_right, "NXDOMAIN"),
    ("SERVFAIL", "CNAME_CSR_HASH", servfail, cname_right, "SERVFAIL"),
    ("CAA naming another CA", "HTTP_CSR_HASH", caa_other_ca, caa_us, "letsencrypt.org"),
]


@pytest.mark.parametrize(
    ("method", "breaks", "fixes", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_fault_is_reported_then_fixed(
    world: World, method: str, breaks: Step, fixes: Step, fragment: str
) -> None:
    name = "shop.example.com"
    data = world.place(name, method)
    breaks(world, name, data)
    world.service.work()
    pending = world.service.call("collect", certId=data["certId"])
    assert pending["status"] == "PENDING"
    row = pending["data"]["dcvList"][0]
    assert fragment in row["lastError"], row["lastError"]
    fixes(world, name, data)
    world.service.advance(timedelta(minutes=15))
    world.service.work()
    done = world.service.call("collect", certId=data["certId"])
    assert done["status"] == "COMPLETE", done["data"]["dcvList"]


def test_a_multi_domain_order_mixing_the_four_methods_issues_once_all_pass(world: World) -> None:
    names = {
        "http.example.com": "HTTP_CSR_HASH",
        "https.example.com": "HTTPS_CSR_HASH",
        "dns.example.com": "CNAME_CSR_HASH",
        "mail.example.com": "EMAIL",
    }
    for name in names:
        world.zone.a[name] = SITE_IP
    world.zone.apply()
    domain_info = [
        {"domainName": n, "dcvMethod": m, **({"dcvEmail": f"admin@{n}"} if m == "EMAIL" else {})}
        for n, m in names.items()
    ]
    placed = world.service.call(
        "place",
        productCode="sectigo-multi-domain",
        years=1,
        params={"server": "nginx", "domainInfo": domain_info},
    )
    assert placed["code"] == 1, placed
    data = placed["data"]
    cert_id = data["certId"]
    world.site.serve_file(data["DCVfileName"], data["DCVfileContent"])
    world.tls_site.serve_file(data["DCVfileName"], data["DCVfileContent"])
    world.service.work()
    rows = {
        r["domainName"]: r for r in world.service.call("collect", certId=cert_id)["data"]["dcvList"]
    }
    assert {n for n, r in rows.items() if r["is_verify"]} == {
        "http.example.com",
        "https.example.com",
    }
    assert "NXDOMAIN" in rows["dns.example.com"]["lastError"]
    assert "admin@mail.example.com" in rows["mail.example.com"]["lastError"]
    assert world.tls_site.requests[-1].server_name == "https.example.com"

    cname_right(world, "dns.example.com", data)
    world.service.advance(timedelta(minutes=1))
    world.service.work()
    assert world.service.call("collect", certId=cert_id)["status"] == "PENDING", "mail pending"

    mail = world.smtp.to("admin@mail.example.com")[-1]
    token = re.search(r"/dcv/approve/([A-Za-z0-9_-]{43})", mail.body)
    assert token is not None
    assert world.service.client.post(f"/dcv/approve/{token.group(1)}").status_code == 200
    world.service.work()
    done = world.service.call("collect", certId=cert_id)
    assert done["status"] == "COMPLETE"
    assert {r["verifiedBy"].split()[0] for r in done["data"]["dcvList"]} == set(names.values())
