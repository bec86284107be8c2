"""The BR 3.2.2.4.18 file check against real HTTP(S) servers on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from certbroker.validation.http_file import check_http_file, lines_match
from certbroker.validation.results import CheckResult
from certbroker.validation.safe_addresses import AddressPolicy
from tests.helpers.dcv_http_server import DcvHttpServer, Route, SilentServer, refused_port

NAME = "shop.example.test"
FILE = "148ECC23D64F50CDCCA4F0DAF72A9A4B.txt"
SHA = "f7b3b82e12a4b76d0532898e04fde790c5325e133b17373ff31c17d9f84393b7"
CONTENT = f"{SHA}\nsectigo.com\n"
PATH = f"/.well-known/pki-validation/{FILE}"
LOOPBACK_ALLOWED = AddressPolicy.from_strings(["127.0.0.0/8", "::1/128"])
NOTHING_ALLOWED = AddressPolicy()


def stub_resolver(table: dict[str, list[str]]) -> Callable[[str], Awaitable[list[str]]]:
    """A resolver answering from `table`, NXDOMAIN (EAI_NONAME) for anything else."""

    async def resolve(host: str) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


DEFAULT_DNS = stub_resolver(
    {
        NAME: ["127.0.0.1"],
        "www.example.test": ["127.0.0.1"],
        "internal.example.test": ["127.0.0.2"],
        "metadata.example.test": ["169.254.169.254"],
        "split.example.test": ["127.0.0.1", "10.0.0.1"],
        "v6.example.test": ["::1"],
        "empty.example.test": [],
    }
)


@pytest.fixture
def http() -> Iterator[DcvHttpServer]:
    with DcvHttpServer() as server:
        yield server


@pytest.fixture
def https() -> Iterator[DcvHttpServer]:
    with DcvHttpServer(tls=True) as server:
        yield server


def check(
    http_port: int,
    https_port: int = 1,
    *,
    scheme: str = "http",
    name: str = NAME,
    file_name: str = FILE,
    expected: str = CONTENT,
    policy: AddressPolicy = LOOPBACK_ALLOWED,
    resolve: Callable[[str], Awaitable[list[str]]] | None = DEFAULT_DNS,
    timeout: float = 5.0,
    allowed_ports: tuple[int, ...] | None = None,
    max_redirects: int = 10,
) -> CheckResult:
    assert scheme in ("http", "https")
    return asyncio.run(
        check_http_file(
            name,
            file_name,
            expected,
            scheme="https" if scheme == "https" else "http",
            http_port=http_port,
            https_port=https_port,
            policy=policy,
            resolve=resolve,
            timeout=timeout,
            allowed_ports=allowed_ports,
            max_redirects=max_redirects,
        )
    )


# --- success --------------------------------------------------------------------------------


def test_http_file_found_sends_name_in_host_header(http: DcvHttpServer) -> None:
    http.serve_file(FILE, CONTENT)
    result = check(http.port)
    url = f"http://{NAME}:{http.port}{PATH}"
    assert result == CheckResult(True, f"expected content found at {url}", url)
    assert [(r.path, r.host) for r in http.requests] == [(PATH, f"{NAME}:{http.port}")]


def test_checks_share_no_cookies_or_connections(http: DcvHttpServer) -> None:
    # Checks in one event loop share one HTTP client (it is built once per loop): a cookie set
    # by one site must not reach the next check, and every check opens its own connection.
    http.routes[PATH] = Route(body=CONTENT.encode(), headers={"Set-Cookie": "session=abc; Path=/"})

    async def twice() -> list[CheckResult]:
        return [
            await check_http_file(
                NAME,
                FILE,
                CONTENT,
                scheme="http",
                http_port=http.port,
                https_port=1,
                policy=LOOPBACK_ALLOWED,
                resolve=DEFAULT_DNS,
                timeout=5.0,
            )
            for _ in range(2)
        ]

    assert [r.ok for r in asyncio.run(twice())] == [True, True]
    assert [r.cookie for r in http.requests] == [None, None]


def test_https_file_found_with_sni_and_self_signed_certificate(https: DcvHttpServer) -> None:
    https.serve_file(FILE, CONTENT)
    result = check(1, https.port, scheme="https")
    assert result.ok, result.detail
    assert result.checked_url == f"https://{NAME}:{https.port}{PATH}"
    seen = https.requests[0]
    assert (seen.server_name, seen.host) == (NAME, f"{NAME}:{https.port}")


def test_crlf_case_bom_and_trailing_blank_lines_still_match(http: DcvHttpServer) -> None:
    http.serve_file(FILE, "\ufeff" + SHA.upper() + "\r\nSectigo.COM  \r\n\r\n\r\n")
    assert check(http.port).ok


def test_ipv6_loopback_server(http: DcvHttpServer) -> None:
    with DcvHttpServer("::1") as v6:
        v6.serve_file(FILE, CONTENT)
        result = check(v6.port, name="v6.example.test")
    assert result.ok, result.detail
    assert v6.requests[0].host == f"v6.example.test:{v6.port}"


def test_system_resolver_is_the_default(http: DcvHttpServer) -> None:
    # "localhost" comes from /etc/hosts, no network needed.
    http.serve_file(FILE, CONTENT)
    result = check(http.port, name="localhost", resolve=None)
    assert result.ok, result.detail
    assert http.requests[0].host == f"localhost:{http.port}"


def test_next_address_is_tried_when_one_refuses(http: DcvHttpServer) -> None:
    http.serve_file(FILE, CONTENT)
    # Nothing listens on 127.0.0.2 at this port, so the first address refuses.
    result = check(http.port, resolve=stub_resolver({NAME: ["127.0.0.2", "127.0.0.1"]}))
    assert result.ok, result.detail


def test_each_host_is_resolved_once_and_the_checked_address_is_used(http: DcvHttpServer) -> None:
    # A rebinding name server would answer differently the second time; there is no second time.
    asked: list[str] = []

    async def rebinding(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"] if len(asked) == 1 else ["10.0.0.1"]

    http.serve_file(FILE, CONTENT)
    assert check(http.port, resolve=rebinding).ok
    assert asked == [NAME]


# --- answers that fail ----------------------------------------------------------------------


def test_404(http: DcvHttpServer) -> None:
    result = check(http.port)
    url = f"http://{NAME}:{http.port}{PATH}"
    assert result == CheckResult(False, f"HTTP 404 at {url}", url)


def test_wrong_content(http: DcvHttpServer) -> None:
    http.serve_file(FILE, "zz" * 40 + "\nsectigo.com\n")
    result = check(http.port)
    url = f"http://{NAME}:{http.port}{PATH}"
    assert result.detail == (
        f"content mismatch at {url}: expected first line ‘f7b3b82e12a4b76d0532…’,"
        " found ‘zzzzzzzzzzzzzzzzzzzz…’"
    )
    assert not result.ok


def test_missing_second_line_is_named(http: DcvHttpServer) -> None:
    http.serve_file(FILE, SHA)
    result = check(http.port)
    assert result.detail.endswith("expected line 2 ‘sectigo.com’, found nothing")


def test_empty_file(http: DcvHttpServer) -> None:
    http.serve_file(FILE, "\n")
    assert check(http.port).detail.endswith(": the file is empty")


def test_body_larger_than_limit_stops_reading(http: DcvHttpServer) -> None:
    http.routes[PATH] = Route(body=CONTENT.encode(), stream_bytes=50 * 1024 * 1024)
    result = check(http.port)
    assert result.detail == f"response larger than 4096 bytes at http://{NAME}:{http.port}{PATH}"
    # The server could only push what the socket buffers took before the checker hung up.
    assert http.bytes_sent[PATH] < 50 * 1024 * 1024


def test_10_mb_body_with_content_length_is_not_read(http: DcvHttpServer) -> None:
    http.routes[PATH] = Route(body=b"a" * (10 * 1024 * 1024))
    result = check(http.port)
    assert not result.ok
    assert result.detail.startswith("response larger than 4096 bytes at ")


def test_tls_to_a_plain_http_server_fails_cleanly(http: DcvHttpServer) -> None:
    result = check(1, http.port, scheme="https")
    assert not result.ok
    assert result.detail.startswith(f"TLS handshake with 127.0.0.1:{http.port} failed for https://")


# --- redirects ------------------------------------------------------------------------------


def test_relative_redirect_to_the_right_file(http: DcvHttpServer) -> None:
    http.redirect(PATH, "/files/dcv.txt", status=301)
    http.routes["/files/dcv.txt"] = Route(body=CONTENT.encode())
    result = check(http.port)
    assert result.ok, result.detail
    assert result.checked_url == f"http://{NAME}:{http.port}/files/dcv.txt"


def test_redirect_http_to_https_on_another_host(http: DcvHttpServer, https: DcvHttpServer) -> None:
    http.redirect(PATH, https.url(PATH, host="www.example.test"), status=308)
    https.serve_file(FILE, CONTENT)
    result = check(http.port, https.port)
    assert result.ok, result.detail
    seen = https.requests[0]
    assert (seen.server_name, seen.host) == ("www.example.test", f"www.example.test:{https.port}")


def test_redirect_loop(http: DcvHttpServer) -> None:
    http.redirect(PATH, "/a")
    http.redirect("/a", "/b", status=307)
    http.redirect("/b", PATH)
    result = check(http.port)
    assert result.detail == f"redirect loop at http://{NAME}:{http.port}{PATH}"


def test_ten_redirects_are_followed(http: DcvHttpServer) -> None:
    http.redirect(PATH, "/hop/1")
    for hop in range(1, 10):
        http.redirect(f"/hop/{hop}", f"/hop/{hop + 1}")
    http.routes["/hop/10"] = Route(body=CONTENT.encode())
    assert check(http.port).ok


def test_more_than_ten_redirects(http: DcvHttpServer) -> None:
    http.redirect(PATH, "/hop/1")
    for hop in range(1, 11):
        http.redirect(f"/hop/{hop}", f"/hop/{hop + 1}")
    http.routes["/hop/11"] = Route(body=CONTENT.encode())
    result = check(http.port)
    assert result.detail == f"more than 10 redirects, starting at http://{NAME}:{http.port}{PATH}"
    assert "/hop/11" not in [r.path for r in http.requests]


def test_redirect_to_a_port_not_allowed(http: DcvHttpServer) -> None:
    http.redirect(PATH, f"http://{NAME}:8080/x")
    result = check(http.port, 443)
    assert result.detail == f"redirect to port 8080 refused (only {http.port} and 443)"
    assert result.checked_url == f"http://{NAME}:8080/x"


def test_redirect_without_port_means_the_default_port(http: DcvHttpServer) -> None:
    http.redirect(PATH, f"https://{NAME}/x")
    result = check(http.port, 8443)
    assert result.detail == f"redirect to port 443 refused (only {http.port} and 8443)"


def test_redirect_to_a_loopback_address_not_allowed(http: DcvHttpServer) -> None:
    # The target server really listens on 127.0.0.2: the check must refuse before connecting.
    with DcvHttpServer("127.0.0.2") as internal:
        internal.serve_file(FILE, CONTENT)
        http.redirect(PATH, internal.url(PATH, host="internal.example.test"))
        only_first = AddressPolicy.from_strings(["127.0.0.1/32"])
        result = check(http.port, allowed_ports=(http.port, internal.port), policy=only_first)
    assert result.detail == "internal.example.test resolves to 127.0.0.2, a loopback address"
    assert internal.requests == []


def test_redirect_to_cloud_metadata_address(http: DcvHttpServer) -> None:
    http.redirect(PATH, "http://169.254.169.254/latest/meta-data/")
    result = check(http.port, allowed_ports=(http.port, 80))
    assert result.detail == "169.254.169.254 is a link-local address"


def test_redirect_to_a_name_for_the_metadata_address(http: DcvHttpServer) -> None:
    http.redirect(PATH, "http://metadata.example.test/latest/meta-data/")
    result = check(http.port, allowed_ports=(http.port, 80))
    assert (
        result.detail == "metadata.example.test resolves to 169.254.169.254, a link-local address"
    )
    assert result.checked_url == "http://metadata.example.test/latest/meta-data/"


@pytest.mark.parametrize(
    ("location", "detail"),
    [
        ("ftp://shop.example.test/x", "redirect to scheme ‘ftp’ refused (only http and https)"),
        ("http://bad_host!/x", "invalid redirect target ‘http://bad_host!/x’"),
    ],
)
def test_redirect_targets_refused(http: DcvHttpServer, location: str, detail: str) -> None:
    http.redirect(PATH, location)
    result = check(http.port)
    assert result.detail == f"{detail} at http://{NAME}:{http.port}{PATH}"


def test_303_is_not_an_allowed_redirect(http: DcvHttpServer) -> None:
    http.redirect(PATH, "/elsewhere", status=303)
    result = check(http.port)
    assert result.detail == (
        f"HTTP 303 at http://{NAME}:{http.port}{PATH} (redirects must be 301, 302, 307 or 308)"
    )
    assert [r.path for r in http.requests] == [PATH]


def test_redirect_without_location(http: DcvHttpServer) -> None:
    http.routes[PATH] = Route(status=302)
    result = check(http.port)
    assert result.detail == f"HTTP 302 without a Location at http://{NAME}:{http.port}{PATH}"


# --- network failures -----------------------------------------------------------------------


def test_server_that_never_answers_times_out() -> None:
    with SilentServer() as silent:
        result = check(silent.port, timeout=1.0)
    assert result.detail == f"timed out after 1 s fetching http://{NAME}:{silent.port}{PATH}"
    assert silent.accepted == 1


def test_total_time_is_bounded_even_if_bytes_keep_coming(http: DcvHttpServer) -> None:
    # One byte every 0.2 s never trips a per-read timeout; the per-request bound must.
    http.routes[PATH] = Route(body=b"x" * 100, drip_delay=0.2)
    result = check(http.port, timeout=1.0)
    assert result.detail == f"timed out after 1 s fetching http://{NAME}:{http.port}{PATH}"
    assert http.bytes_sent[PATH] < 100


def test_all_addresses_refusing_are_all_reported() -> None:
    with refused_port() as port:
        result = check(port, resolve=stub_resolver({NAME: ["127.0.0.2", "127.0.0.1"]}))
    url = f"http://{NAME}:{port}{PATH}"
    assert result.detail == (
        f"connection refused by 127.0.0.2:{port} for {url}; "
        f"connection refused by 127.0.0.1:{port} for {url}"
    )


def test_connection_refused() -> None:
    with refused_port() as port:
        result = check(port)
    url = f"http://{NAME}:{port}{PATH}"
    assert result == CheckResult(False, f"connection refused by 127.0.0.1:{port} for {url}", url)


# --- names and addresses --------------------------------------------------------------------


def test_name_resolving_to_loopback_when_not_allowed(http: DcvHttpServer) -> None:
    http.serve_file(FILE, CONTENT)
    result = check(http.port, policy=NOTHING_ALLOWED)
    assert result.detail == f"{NAME} resolves to 127.0.0.1, a loopback address"
    assert http.requests == []


def test_one_private_address_among_several_fails_the_check(http: DcvHttpServer) -> None:
    http.serve_file(FILE, CONTENT)
    result = check(http.port, name="split.example.test")
    assert result.detail == "split.example.test resolves to 10.0.0.1, a private address"
    assert http.requests == []


def test_nxdomain() -> None:
    result = check(1, name="nowhere.example.test")
    assert result.detail == "nowhere.example.test does not resolve: Name or service not known"
    assert result.checked_url == f"http://nowhere.example.test:1{PATH}"


def test_no_addresses() -> None:
    assert (
        check(1, name="empty.example.test").detail == "empty.example.test has no A or AAAA records"
    )


def test_resolver_error_text_is_reported() -> None:
    async def broken(host: str) -> list[str]:
        raise RuntimeError("SERVFAIL from 127.0.0.53")

    result = check(1, resolve=broken)
    assert result.detail == f"DNS lookup of {NAME} failed: SERVFAIL from 127.0.0.53"


def test_slow_resolver_times_out() -> None:
    async def slow(host: str) -> list[str]:
        await asyncio.sleep(30)
        return ["127.0.0.1"]

    result = check(1, resolve=slow, timeout=0.5)
    assert result.detail == f"timed out after 0.5 s resolving {NAME} for http://{NAME}:1{PATH}"


def test_wildcard_name_is_refused() -> None:
    result = check(1, name="*.example.test")
    assert result == CheckResult(
        False, "file validation cannot be used for the wildcard name *.example.test"
    )


@pytest.mark.parametrize("file_name", ["../etc/passwd", "a/b.txt", "x.txt?y", ""])
def test_file_name_must_be_a_plain_name(file_name: str) -> None:
    result = check(1, file_name=file_name)
    assert not result.ok
    assert result.detail.startswith("invalid validation file name")


@pytest.mark.parametrize("name", ["shop.example.test/evil", "user@shop.example.test", "a b.test"])
def test_name_must_be_a_host_name(name: str) -> None:
    result = check(1, name=name)
    assert not result.ok
    assert result.detail.startswith("invalid domain name")


# --- AddressPolicy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("169.254.169.254", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a broadcast address"),
        ("0.0.0.0", "an unspecified address"),  # noqa: S104 - an address to refuse, not bind
        ("100.64.0.1", "a shared address (RFC 6598)"),
        ("192.0.2.10", "a documentation address"),
        ("198.51.100.1", "a documentation address"),
        ("203.0.113.1", "a documentation address"),
        ("198.18.0.1", "a reserved address"),
        ("::", "an unspecified address"),
        ("::1", "a loopback address"),
        ("fd00::1", "a private address"),
        ("fe80::1", "a link-local address"),
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a documentation address"),
        ("2002:a00:1::1", "a 6to4 address"),
        ("::ffff:10.0.0.1", "an IPv4-mapped address of 10.0.0.1, a private address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped address of 127.0.0.1, a loopback address"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 address of 169.254.169.254, a link-local address"),
        ("::a00:1", "a reserved address"),
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    assert NOTHING_ALLOWED.check(ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert NOTHING_ALLOWED.check(ip_address(address)) is None


def test_allowed_networks_override_and_cover_mapped_addresses() -> None:
    policy = AddressPolicy.from_strings(["127.0.0.0/8", " fd00::/8 "])
    assert policy.allow_networks == (ip_network("127.0.0.0/8"), ip_network("fd00::/8"))
    assert policy.check(IPv4Address("127.9.9.9")) is None
    assert policy.check(IPv6Address("::ffff:127.0.0.1")) is None
    assert policy.check(IPv6Address("fd00::5")) is None
    assert policy.check(IPv6Address("::1")) == "a loopback address"
    assert policy.check(IPv4Address("10.0.0.1")) == "a private address"


def test_invalid_allowed_network_is_named() -> None:
    with pytest.raises(ValueError, match=r"invalid allowed network '127\.0\.0\.1/8': "):
        AddressPolicy.from_strings(["127.0.0.1/8"])


# --- content comparison ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected", "same"),
    [
        ("ABC\r\nDef\r\n", "abc\ndef", True),
        ("abc\rdef\n\n\n", "abc\ndef\n", True),
        ("  abc  \ndef", "abc\ndef", True),
        ("abc\ndef\nmore", "abc\ndef", False),
        ("abc", "abc\ndef", False),
        ("\nabc\ndef", "abc\ndef", False),
        ("abd\ndef", "abc\ndef", False),
    ],
)
def test_lines_match(body: str, expected: str, same: bool) -> None:
    assert lines_match(body, expected) is same


def test_custom_matcher_is_used(http: DcvHttpServer) -> None:
    http.serve_file(FILE, "token-123 and more")
    result = asyncio.run(
        check_http_file(
            NAME,
            FILE,
            "token-123",
            scheme="http",
            http_port=http.port,
            policy=LOOPBACK_ALLOWED,
            resolve=DEFAULT_DNS,
            content_matches=lambda body, expected: expected in body,
        )
    )
    assert result.ok, result.detail
