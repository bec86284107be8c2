"""`certbroker dns serve` as operators run it: a process configured by the environment,
answering on loopback from the database the other processes write."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from certbroker.clock import SystemClock
from certbroker.dns_delegation.builtin_publisher import BuiltinPublisher
from certbroker.dns_delegation.confirmation import txt_strings
from certbroker.store.db import Database
from tests.helpers.challtestsrv import free_port

ZONE = "dcv.operator.example"
NAME = f"abcdefghijklmnopqrstuvwxyz.{ZONE}"


def ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", timeout=1, port=port)


def test_dns_serve_answers_what_the_database_holds(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "CERTBROKER_DATA_DIR": str(data),
        "CERTBROKER_CONFIG": str(tmp_path / "none.toml"),
        "CERTBROKER_DCV_DELEGATION__ZONE": ZONE,
        "CERTBROKER_DCV_DELEGATION__NAMESERVERS": "ns1.operator.example,ns2.operator.example",
        "CERTBROKER_DCV_DELEGATION__LISTEN_PORT": str(port),
        "CERTBROKER_LOG_FORMAT": "console",
    }
    env.pop("CERTBROKER_DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "certbroker", "dns", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                soa = ask(port, ZONE, "SOA")
                break
            except (dns.exception.Timeout, OSError):
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "certbroker dns serve did not answer"
        assert soa.answer[0].rdtype == dns.rdatatype.SOA
        db = Database(f"sqlite:///{(data / 'certbroker.db').resolve()}")
        publisher = BuiltinPublisher(
            db,
            SystemClock(),
            server=f"127.0.0.1:{port}",
            lifetime=timedelta(minutes=5),
            confirm_timeout=10,
        )
        asyncio.run(publisher.publish_txt(NAME, ["token-value"], 60))
        asyncio.run(publisher.confirm(NAME, ["token-value"]))
        assert txt_strings(ask(port, NAME, "TXT"), NAME) == {"token-value"}
        assert ask(port, "other.example", "TXT").rcode() == dns.rcode.REFUSED
        db.dispose()
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
