"""The HTTP(S) file check of CA/B Forum BR 3.2.2.4.18 ("Agreed-Upon Change to Website v2").

The applicant puts a file under `/.well-known/pki-validation/` on the name being validated; we
fetch it the way a public CA does (limits modelled on Let's Encrypt's Boulder, `va/http.go`):

* The host is resolved here, every address is checked against an `AddressPolicy`, and the
  connection goes to the checked address with the original `Host` header (and SNI for https), so
  a second DNS answer can never smuggle in another address (see `safe_addresses`).
* Redirects are followed by hand, only for 301, 302, 307 and 308, only to http/https URLs on the
  authorized ports, at most `max_redirects` times; every hop is resolved and checked again
  (BR 3.2.2.4.18 "If the CA follows redirects").
* Only a 2xx answer counts, at most `max_bytes` of the body are read whatever Content-Length
  says, and each hop (DNS included) must finish within `timeout` seconds.
* https does not verify the server certificate. BR 3.2.2.4.18 proves control through the file
  content, not the TLS certificate, and the site often has no valid certificate yet (that is
  why it is ordering one); RFC 8555 8.3 likewise tells ACME servers to ignore the certificate
  when an http-01 redirect leads to https.

Every failure is returned as `CheckResult(ok=False, detail=...)`; nothing is raised.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Literal

import httpx

from certbroker.pki.text import safe_text
from certbroker.validation.results import CheckResult
from certbroker.validation.safe_addresses import (
    AddressPolicy,
    IPAddress,
    ascii_host,
    parse_ip,
    valid_host,
)

WELL_KNOWN_DIR = "/.well-known/pki-validation/"
# RFC 8555 8.3: where an ACME http-01 response is published; its file name is the token.
ACME_CHALLENGE_DIR = "/.well-known/acme-challenge/"

Resolver = Callable[[str], Awaitable[list[str]]]
ContentMatcher = Callable[[str, str], bool]

# BR 3.2.2.4.18: redirects MUST be 301, 302 or 307 (RFC 7231 6.4) or 308 (RFC 7538 3).
_REDIRECT_STATUSES = frozenset({301, 302, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USER_AGENT = "certbroker-dcv/1 (CA/B Forum BR 3.2.2.4.18)"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_ACME_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,255}")  # base64url, RFC 8555 8.1
_EXCERPT_CHARS = 20


async def system_resolve(host: str) -> list[str]:
    """Resolve `host` with the operating system's resolver (A and AAAA)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def key_authorization_matches(body: str, expected: str) -> bool:
    """RFC 8555 8.3: the body is the key authorization exactly; whitespace at its end is
    ignored."""
    return body.rstrip() == expected


def lines_match(body: str, expected: str) -> bool:
    """Default comparison: same lines, ignoring case, line endings (CRLF, LF, CR), whitespace
    around each line, a UTF-8 byte order mark and trailing blank lines."""
    return [line.casefold() for line in _lines(body)] == [
        line.casefold() for line in _lines(expected)
    ]


async def check_http_file(
    name: str,
    file_name: str,
    expected_content: str,
    *,
    scheme: Literal["http", "https"],
    policy: AddressPolicy,
    http_port: int = 80,
    https_port: int = 443,
    resolve: Resolver | None = None,
    timeout: float = 10.0,
    max_redirects: int = 10,
    max_bytes: int = 4096,
    allowed_ports: tuple[int, ...] | None = None,
    content_matches: ContentMatcher | None = None,
    well_known_dir: str = WELL_KNOWN_DIR,
) -> CheckResult:
    """Fetch `{scheme}://{name}/.well-known/pki-validation/{file_name}` and compare its content.

    `well_known_dir=ACME_CHALLENGE_DIR` fetches an ACME http-01 response instead (the file name
    is the token); pair it with `content_matches=key_authorization_matches`. The limits are the
    same.

    The first request goes to `http_port` or `https_port` (80 and 443 in production, Pebble-style
    settings in tests); redirects may only go to `allowed_ports`, by default those two, and at
    most `max_redirects` of them are followed. A Location without a port means the scheme's
    default port (80/443), as in any URL.
    `resolve` returns the addresses of a host (default: the system resolver); an empty list
    means "no addresses", an exception means the lookup failed and its text is reported.
    """
    if scheme not in _DEFAULT_PORTS:
        return CheckResult(False, f"unsupported scheme ‘{_excerpt(scheme)}’ (only http and https)")
    if name.startswith("*."):
        # BR 3.2.2.4.18: "This method is NOT suitable for validating Wildcard Domain Names."
        return CheckResult(False, f"file validation cannot be used for the wildcard name {name}")
    if well_known_dir not in (WELL_KNOWN_DIR, ACME_CHALLENGE_DIR):
        return CheckResult(False, f"unsupported directory {well_known_dir}")
    name_pattern = _ACME_TOKEN if well_known_dir == ACME_CHALLENGE_DIR else _FILE_NAME
    if not name_pattern.fullmatch(file_name):
        return CheckResult(False, f"invalid validation file name ‘{_excerpt(file_name)}’")
    ports = allowed_ports if allowed_ports is not None else (http_port, https_port)
    try:
        url = httpx.URL(
            scheme=scheme,
            host=name,
            port=http_port if scheme == "http" else https_port,
            path=well_known_dir + file_name,
        )
    except (httpx.InvalidURL, UnicodeError) as exc:
        return CheckResult(False, f"invalid domain name ‘{_excerpt(name)}’: {exc}")
    if not valid_host(ascii_host(url)):
        return CheckResult(False, f"invalid domain name ‘{_excerpt(name)}’")

    fetcher = _Fetcher(
        policy=policy,
        resolve=resolve or system_resolve,
        timeout=timeout,
        max_bytes=max_bytes,
    )
    matches = content_matches or lines_match
    first_url = url
    visited = {str(url)}
    redirects = 0
    while True:
        outcome = await fetcher.fetch(url)
        if isinstance(outcome, CheckResult):
            return outcome
        if isinstance(outcome, _Body):
            return _judge_body(outcome.data, expected_content, matches, url)
        target = _redirect_target(outcome.location, url, ports)
        if isinstance(target, CheckResult):
            return target
        shown = str(target)
        if shown in visited:
            return CheckResult(False, f"redirect loop at {shown}", shown)
        redirects += 1
        if redirects > max_redirects:
            return CheckResult(
                False, f"more than {max_redirects} redirects, starting at {first_url}", shown
            )
        visited.add(shown)
        url = target


@dataclass(frozen=True)
class _Body:
    data: bytes


@dataclass(frozen=True)
class _Redirect:
    location: str


@dataclass(frozen=True)
class _Fetcher:
    """One HTTP request per hop, to a checked address, within the time and size limits."""

    policy: AddressPolicy
    resolve: Resolver
    timeout: float
    max_bytes: int

    async def fetch(self, url: httpx.URL) -> _Body | _Redirect | CheckResult:
        shown = str(url)
        stage = f"resolving {ascii_host(url)} for {shown}"
        try:
            async with asyncio.timeout(self.timeout):
                addresses = await self._checked_addresses(ascii_host(url))
                if isinstance(addresses, str):
                    return CheckResult(False, addresses, shown)
                stage = f"fetching {shown}"
                failures: list[str] = []
                for ip in addresses:
                    try:
                        return await self._request(url, ip)
                    except httpx.ConnectError as exc:
                        # Like a browser, try the next address when one refuses the connection.
                        failures.append(_describe_error(exc, url, ip))
                    except (httpx.HTTPError, httpx.InvalidURL, ssl.SSLError, OSError) as exc:
                        if isinstance(exc, httpx.TimeoutException):
                            raise TimeoutError from exc
                        return CheckResult(False, _describe_error(exc, url, ip), shown)
                return CheckResult(False, "; ".join(failures), shown)
        except TimeoutError:
            return CheckResult(False, f"timed out after {self.timeout:g} s {stage}", shown)

    async def _checked_addresses(self, host: str) -> list[IPAddress] | str:
        """All addresses of `host` if every one is allowed, else why not."""
        literal = parse_ip(host)
        if literal is not None:
            reason = self.policy.check(literal)
            return f"{host} is {reason}" if reason else [literal]
        try:
            answers = await self.resolve(host)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                return f"{host} does not resolve: {exc.strerror}"
            return f"DNS lookup of {host} failed: {exc.strerror or exc}"
        except Exception as exc:  # a pluggable resolver may raise anything; report its text
            return f"DNS lookup of {host} failed: {exc or type(exc).__name__}"
        addresses: list[IPAddress] = []
        for answer in answers:
            ip = parse_ip(answer)
            if ip is None:
                return f"DNS lookup of {host} returned an invalid address ‘{_excerpt(answer)}’"
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            return f"{host} has no A or AAAA records"
        for ip in addresses:
            reason = self.policy.check(ip)
            if reason:
                return f"{host} resolves to {ip}, {reason}"
        return addresses

    async def _request(self, url: httpx.URL, ip: IPAddress) -> _Body | _Redirect | CheckResult:
        # Connect to the checked address; the name only travels in Host and SNI.
        by_address = httpx.URL(
            scheme=url.scheme, host=str(ip), port=url.port, raw_path=url.raw_path
        )
        sni = {} if parse_ip(ascii_host(url)) else {"sni_hostname": ascii_host(url)}
        client = _client()
        request = client.build_request(
            "GET",
            by_address,
            headers={
                "Host": url.netloc.decode("ascii"),
                "User-Agent": _USER_AGENT,
                "Accept": "*/*",
                # Every check is a fresh connection, as in Boulder (DisableKeepAlives).
                "Connection": "close",
            },
            extensions=sni,
            timeout=httpx.Timeout(self.timeout),
        )
        response = await client.send(request, stream=True)
        try:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    return _fail(f"HTTP {response.status_code} without a Location at {url}", url)
                return _Redirect(location)
            status = response.status_code
            if 300 <= status < 400:
                return _fail(
                    f"HTTP {status} at {url} (redirects must be 301, 302, 307 or 308)", url
                )
            if not 200 <= status < 300:
                # BR 3.2.2.4.18 (ii): only a 2xx answer counts.
                return _fail(f"HTTP {status} at {url}", url)
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > self.max_bytes:
                    # Stop reading: a check must not download whatever the server sends.
                    return _fail(f"response larger than {self.max_bytes} bytes at {url}", url)
            return _Body(bytes(data))
        finally:
            await response.aclose()


_NO_SUCH_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


def _fail(detail: str, url: httpx.URL) -> CheckResult:
    return CheckResult(False, detail, str(url))


def _redirect_target(
    location: str, current: httpx.URL, ports: tuple[int, ...]
) -> httpx.URL | CheckResult:
    """The URL a Location header points to, if BR 3.2.2.4.18 lets us follow it."""
    try:
        joined = current.join(location.strip())  # RFC 7231 7.1.2: relative to the request URL
        if joined.scheme not in _DEFAULT_PORTS:
            return _fail(
                f"redirect to scheme ‘{_excerpt(joined.scheme)}’ refused (only http and https)"
                f" at {current}",
                current,
            )
        port = _port_of(joined)
        # Rebuilt from parts: drops user:password and the fragment, neither is sent.
        target = httpx.URL(
            scheme=joined.scheme,
            host=ascii_host(joined),
            port=joined.port,
            raw_path=joined.raw_path,
        )
    except (httpx.InvalidURL, UnicodeError):
        return _fail(f"invalid redirect target ‘{_excerpt(location)}’ at {current}", current)
    if not valid_host(ascii_host(target)):
        return _fail(f"invalid redirect target ‘{_excerpt(location)}’ at {current}", current)
    if port not in ports:
        return _fail(f"redirect to port {port} refused (only {_and_list(ports)})", target)
    return target


def _judge_body(data: bytes, expected: str, matches: ContentMatcher, url: httpx.URL) -> CheckResult:
    body = data.decode("utf-8", errors="replace")
    if matches(body, expected):
        return _ok(f"expected content found at {url}", url)
    return _fail(f"content mismatch at {url}: {_describe_mismatch(body, expected)}", url)


def _ok(detail: str, url: httpx.URL) -> CheckResult:
    return CheckResult(True, detail, str(url))


def _describe_mismatch(body: str, expected: str) -> str:
    found, wanted = _lines(body), _lines(expected)
    if not found:
        return "the file is empty"
    index = next(
        (
            i
            for i in range(max(len(found), len(wanted)))
            if i >= len(found) or i >= len(wanted) or found[i].casefold() != wanted[i].casefold()
        ),
        None,
    )
    if index is None:  # a custom matcher disagreed with the line comparison
        return f"found first line ‘{_excerpt(found[0])}’"
    which = "first line" if index == 0 else f"line {index + 1}"
    want_text = f"‘{_excerpt(wanted[index])}’" if index < len(wanted) else "nothing"
    have_text = f"‘{_excerpt(found[index])}’" if index < len(found) else "nothing"
    return f"expected {which} {want_text}, found {have_text}"


def _lines(text: str) -> list[str]:
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", text.removeprefix("\ufeff"))]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _excerpt(text: str) -> str:
    """A short piece of untrusted text, safe in a message (pki/text.py)."""
    return safe_text(text, _EXCERPT_CHARS)


def _and_list(ports: tuple[int, ...]) -> str:
    names = [str(port) for port in ports]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _port_of(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def _client() -> httpx.AsyncClient:
    """One client per event loop: building one per check cost ~0.5 ms of CPU. It keeps no
    connection alive, so no check ever rides on a connection another check opened."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(
            verify=_unverified_tls_context(),
            trust_env=False,  # an HTTP(S)_PROXY variable must not route checks elsewhere
            follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            # A shared client must not carry one site's cookies into another site's check.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
        _clients[loop] = client
    return client


@functools.cache
def _unverified_tls_context() -> ssl.SSLContext:
    # See the module docstring: BR 3.2.2.4.18 does not rely on the server certificate. Built
    # once: loading the system trust store (which this context does not need) took ~30 ms.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _describe_error(exc: BaseException, url: httpx.URL, ip: IPAddress) -> str:
    port = _port_of(url)
    where = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    chain = _causes(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"connection refused by {where} for {url}"
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None:
        return f"TLS handshake with {where} failed for {url}: {tls.reason or tls}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect to {where} for {url}: {text}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"invalid HTTP response from {where} for {url}: {text}"
    return f"fetching {url} from {where} failed: {text}"


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
