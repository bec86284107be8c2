"""Section 2: the same orders through Pebble (Let's Encrypt's Go test CA) with the `acme` client.

Per order: newOrder with the prepared CSR (the client fetches each authorization), put the
http-01 key authorization on pebble-challtestsrv, answer the challenge, poll the authorization
until valid, finalize, poll the order until valid, download the certificate. Polls sleep the
same interval as the certbroker clients; `poll_and_finalize` is not used because it sleeps a
second before its first poll. Pebble runs with PEBBLE_VA_NOSLEEP=1 and
PEBBLE_WFE_NONCEREJECT=0; validation really fetches the file over HTTP after a DNS lookup.
"""

from __future__ import annotations

import http.client
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acme import challenges, client, messages
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from bench.certbroker_e2e import SiteClient
from bench.common import ChallTestSrv, CpuMeter, PebbleServer, peak_rss_mb
from bench.load import LoadResult, PollSchedule, run_load

_WAITING = (messages.STATUS_PENDING, messages.STATUS_PROCESSING)


@dataclass(frozen=True)
class AcmeItem:
    name: str
    csr: str


class AcmeOrderJob:
    """One client lane with its own ACME account (ES256: cheaper to sign than RS256)."""

    def __init__(self, config: dict[str, Any]) -> None:
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
        self.polls = PollSchedule(float(config["poll_seconds"]), float(config["poll_max_seconds"]))
        self.timeout = float(config.get("order_timeout", 120.0))
        self.management_port = int(config["management_port"])
        self.key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        # Loopback only, to a server whose certificate the bench made a moment ago.
        net = client.ClientNetwork(
            self.key, alg=ES256, verify_ssl=False, user_agent="certbroker-bench"
        )
        directory = client.ClientV2.get_directory(config["directory"], net)
        self.acme = client.ClientV2(directory, net)
        eab = None
        if config.get("eab_kid"):
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.key.public_key(),
                kid=config["eab_kid"],
                hmac_key=config["eab_hmac_key"],
                directory=directory,
            )
        self.acme.new_account(
            messages.NewRegistration.from_data(
                terms_of_service_agreed=True, external_account_binding=eab
            )
        )
        self._management: http.client.HTTPConnection | None = None
        # With `site_port`, http-01 files go on bench.dcv_site (the upstream section's Pebble
        # fetches from there) instead of challtestsrv's responder.
        self.site = SiteClient(int(config["site_port"])) if config.get("site_port") else None

    def _add_http01(self, token: str, content: str) -> None:
        body = json.dumps({"token": token, "content": content})
        for attempt in (1, 2):
            if self._management is None:
                self._management = http.client.HTTPConnection(
                    "127.0.0.1", self.management_port, timeout=30
                )
            try:
                self._management.request("POST", "/add-http01", body)
                response = self._management.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self._management.close()
                self._management = None
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"challtestsrv answered {response.status} to add-http01")
            return

    def _deadline_passed(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} still waiting after {self.timeout} s")

    def run(self, item: AcmeItem) -> None:
        deadline = time.monotonic() + self.timeout
        orderr = self.acme.new_order(item.csr.encode("ascii"))
        for authzr in orderr.authorizations:
            challb = next(
                c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)
            )
            response, validation = challb.response_and_validation(self.key)
            token = challb.chall.encode("token")
            if self.site is not None:
                self.site.publish(f"/.well-known/acme-challenge/{token}", validation)
            else:
                self._add_http01(token, validation)
            self.acme.answer_challenge(challb, response)
        for authzr in orderr.authorizations:
            status = authzr.body.status
            waits = self.polls.waits()
            while status != messages.STATUS_VALID:
                time.sleep(next(waits))
                authzr, _response = self.acme.poll(authzr)
                status = authzr.body.status
                if status not in _WAITING and status != messages.STATUS_VALID:
                    raise RuntimeError(f"authorization of {item.name} became {status}")
                self._deadline_passed(deadline, "authorization")
        orderr = self.acme.begin_finalization(orderr)
        body = orderr.body
        waits = self.polls.waits()
        while body.status != messages.STATUS_VALID or body.certificate is None:
            if body.status not in _WAITING and body.status != messages.STATUS_READY:
                raise RuntimeError(f"order for {item.name} became {body.status}")
            time.sleep(next(waits))
            body = messages.Order.from_json(self.acme._post_as_get(orderr.uri).json())
            self._deadline_passed(deadline, "order")
        pem = self.acme._post_as_get(body.certificate).text
        if "BEGIN CERTIFICATE" not in pem:
            raise RuntimeError(f"no certificate for {item.name}")


def run(
    workdir: Path,
    *,
    chall: ChallTestSrv,
    items: list[AcmeItem],
    concurrency: int,
    processes: int,
    poll_seconds: float,
    poll_max_seconds: float,
) -> tuple[LoadResult, float]:
    """One fresh Pebble, one batch of orders; returns the load result and the peak RSS."""
    pebble = PebbleServer(workdir, chall).start()
    try:
        meter = CpuMeter({"server": pebble.pid, "dns_http01": chall.process.pid})
        config = {
            "directory": pebble.directory_url,
            "management_port": chall.management_port,
            "poll_seconds": poll_seconds,
            "poll_max_seconds": poll_max_seconds,
        }
        result = run_load(
            AcmeOrderJob, config, items, concurrency=concurrency, processes=processes, meter=meter
        )
        return result, peak_rss_mb(pebble.pid)
    finally:
        pebble.stop()
