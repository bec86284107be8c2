"""A thin wrapper around certbot's `acme.client.ClientV2` for talking to an upstream ACME CA.

Only what `acme` 5.x lacks or does in a way the worker cannot use:

* Every call is one request (or a short fixed sequence) with the configured deadline; nothing
  here sleeps or polls (`poll_and_finalize` and `retry_after` sleep and read naive local time;
  timing belongs to the worker and its injected clock).
* A 429/503 `Retry-After` header is captured by a `requests` response hook, because `acme`'s
  errors drop the response headers.
* The account is found by `onlyReturnExisting` (RFC 8555 7.3.1) before a new one is made with
  External Account Binding (7.3.4); `query_registration` on an EAB registration fails in
  `acme` 5.9, so it is never used.
* Results are plain snapshots (`OrderSnapshot`, `AuthzSnapshot`), so orders/ never holds a
  josepy object, and failures are one exception type, `UpstreamError`, with the RFC 7807
  problem type and detail.

A `ClientNetwork` (one requests session, one nonce pool) is not thread-safe: callers use one
`AcmeUpstream` per (account, thread), see `UpstreamClients`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import requests
from acme import challenges, errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.b64 import b64encode
from josepy.errors import DeserializationError
from josepy.json_util import field as jose_field
from josepy.jwa import ES256, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

_USER_AGENT = "certbroker-upstream/1"
ACME_ERROR = "urn:ietf:params:acme:error:"


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream as the wrapper needs it (built from settings by bootstrap)."""

    name: str
    directory: str
    contact: str = ""
    eab_kid: str = ""
    eab_hmac_key: str | None = None
    # PEM file that verifies the directory's TLS certificate; "" = the system's roots.
    ca_bundle: str = ""
    account_key: Literal["ec256", "rsa2048"] = "ec256"
    caa_identities: tuple[str, ...] = ()
    timeout_seconds: float = 30.0
    # Steps of this upstream's orders run at once by one worker.
    max_concurrent_steps: int = 4
    # Circuit breaker: after this many 5xx/time-outs in a row, no step for `circuit_cooldown`.
    circuit_failures: int = 5
    circuit_cooldown_seconds: float = 300.0
    # Key types the upstream certifies (pki/keys.KEY_SPECS spelling).
    key_types: tuple[str, ...] = ("rsa2048", "rsa3072", "rsa4096", "ec256", "ec384")


class UpstreamError(Exception):
    """The upstream refused (a problem document) or could not be reached.

    `problem` is the RFC 8555 6.7 error type without its URN prefix (`unauthorized`,
    `rateLimited`, ...), or `connection` / `timeout` / `malformedResponse` for failures that
    carry no problem document. `retry_after` is when the upstream asked us to come back.
    """

    def __init__(
        self,
        problem: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: datetime | None = None,
        retry_after_header: str | None = None,
        subproblems: tuple[str, ...] = (),
    ) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        # The raw header, so the worker can read a delay in seconds by its own clock.
        self.retry_after_header = retry_after_header
        self.subproblems = subproblems

    @property
    def transient(self) -> bool:
        """A 5xx or no answer at all: the upstream is unwell, not refusing us."""
        return self.problem in ("timeout", "connection", "serverInternal") or (
            self.status is not None and self.status >= 500
        )

    def as_json(self) -> dict[str, Any]:
        """The problem as stored in a row's `last_problem` (RFC 7807 shape)."""
        return {"type": ACME_ERROR + self.problem, "detail": self.detail, "status": self.status}


@dataclass(frozen=True)
class ChallengeSnapshot:
    type: str
    url: str
    token: str | None
    status: str
    error: str | None


@dataclass(frozen=True)
class AuthzSnapshot:
    url: str
    identifier: str
    identifier_type: str
    wildcard: bool
    status: str
    expires: datetime | None
    challenges: tuple[ChallengeSnapshot, ...]

    def challenge(self, kind: str) -> ChallengeSnapshot | None:
        return next((c for c in self.challenges if c.type == kind), None)

    @property
    def error(self) -> str | None:
        """The problem of a failed challenge (RFC 8555 7.1.4 `error`), if any."""
        return next((c.error for c in self.challenges if c.error), None)


@dataclass(frozen=True)
class OrderSnapshot:
    url: str
    status: str
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None
    expires: datetime | None
    error: str | None


def new_account_key_pem(kind: Literal["ec256", "rsa2048"]) -> bytes:
    """A fresh account key (PKCS#8 PEM, unencrypted: callers encrypt it at rest)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _jwk(key_pem: bytes) -> tuple[JWK, JWASignature]:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key), ES256
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), RS256
    raise ValueError("an upstream account key is EC P-256 or RSA")


def thumbprint(key_pem: bytes) -> str:
    """The account key's JWK thumbprint (RFC 7638), base64url, as in key authorizations."""
    jwk, _alg = _jwk(key_pem)
    return b64encode(jwk.public_key().thumbprint()).decode("ascii")


def key_authorization(token: str, account_thumbprint: str) -> str:
    """RFC 8555 8.1: token || '.' || base64url(Thumbprint(accountKey))."""
    return f"{token}.{account_thumbprint}"


def dns01_txt_value(key_auth: str) -> str:
    """RFC 8555 8.4: the TXT value of a dns-01 challenge, base64url(SHA-256(keyAuthorization))."""
    return b64encode(hashlib.sha256(key_auth.encode("ascii")).digest()).decode("ascii")


class _NewOrderReplacing(messages.NewOrder):
    """newOrder with RFC 9773 4.2 `replaces`, which acme 5.9's NewOrder lacks."""

    replaces: str | None = jose_field("replaces", omitempty=True)


def ari_cert_id(certificate: x509.Certificate) -> str:
    """RFC 9773 4.1: base64url(AKI keyIdentifier) "." base64url(serial number DER bytes)."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("the certificate's AKI has no keyIdentifier")
    serial = certificate.serial_number
    # The DER INTEGER's content octets: big-endian, a leading zero when the top bit is set.
    raw = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    return f"{b64encode(aki.key_identifier).decode()}.{b64encode(raw).decode()}"


@dataclass(frozen=True)
class RenewalWindow:
    """RFC 9773 4.2 `suggestedWindow`."""

    start: datetime
    end: datetime


def _problem_text(error: messages.Error | None) -> str | None:
    if error is None:
        return None
    kind = (error.typ or "").removeprefix(ACME_ERROR)
    return f"{kind}: {error.detail}" if error.detail else kind


def retry_after_time(value: str | None, now: datetime) -> datetime | None:
    """When a `Retry-After` header (RFC 9110 10.2.3; RFC 8555 6.6) asks us to come back."""
    if not value:
        return None
    if value.strip().isdigit():
        return now + timedelta(seconds=int(value.strip()))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class AcmeUpstream:
    """One account at one upstream, for one thread."""

    def __init__(self, config: UpstreamConfig, account_key_pem: bytes, account_url: str | None):
        self.config = config
        jwk, alg = _jwk(account_key_pem)
        self._jwk = jwk
        self._net = ClientNetwork(
            jwk,
            alg=alg,
            user_agent=_USER_AGENT,
            timeout=config.timeout_seconds,  # type: ignore[arg-type]  # requests takes floats
        )
        if config.ca_bundle:
            # requests takes a CA bundle path where acme expects a bool.
            self._net.verify_ssl = config.ca_bundle  # type: ignore[assignment]
        self._retry_after_header: str | None = None
        self._last_status: int | None = None
        self._net.session.hooks["response"].append(self._remember_retry_after)
        if account_url:
            self._use_account(account_url)
        self._client: ClientV2 | None = None

    def _remember_retry_after(self, response: requests.Response, *_a: Any, **_k: Any) -> None:
        self._retry_after_header = response.headers.get("Retry-After")
        self._last_status = response.status_code

    def _use_account(self, url: str) -> None:
        self._net.account = messages.RegistrationResource(body=messages.Registration(), uri=url)

    @property
    def account_url(self) -> str | None:
        account = self._net.account
        return None if account is None else account.uri

    @property
    def thumbprint(self) -> str:
        return b64encode(self._jwk.public_key().thumbprint()).decode("ascii")

    def _call(self, what: str, action: Any) -> Any:
        """Run one upstream call, turning every failure into UpstreamError."""
        self._retry_after_header = None
        self._last_status = None
        try:
            return action()
        except messages.Error as exc:
            raise UpstreamError(
                (exc.typ or "about:blank").removeprefix(ACME_ERROR),
                exc.detail or exc.description or what,
                status=self._last_status,
                retry_after=retry_after_time(self._retry_after_header, datetime.now(UTC)),
                retry_after_header=self._retry_after_header,
                subproblems=tuple(_problem_text(s) or "" for s in exc.subproblems or ()),
            ) from None
        except requests.Timeout as exc:
            raise UpstreamError("timeout", f"{what}: {exc}") from None
        except requests.RequestException as exc:
            raise UpstreamError("connection", f"{what}: {exc}") from None
        except (errors.Error, DeserializationError, ValueError, KeyError) as exc:
            # A 5xx without a problem document (a proxy's error page) lands here too.
            status = self._last_status
            kind = "serverInternal" if status is not None and status >= 500 else "malformedResponse"
            raise UpstreamError(
                kind,
                f"{what}: HTTP {status}" if kind == "serverInternal" else f"{what}: {exc}",
                status=status,
                retry_after=retry_after_time(self._retry_after_header, datetime.now(UTC)),
                retry_after_header=self._retry_after_header,
            ) from None

    @property
    def client(self) -> ClientV2:
        if self._client is None:
            directory = self._call(
                "directory", lambda: ClientV2.get_directory(self.config.directory, self._net)
            )
            self._client = ClientV2(directory, self._net)
        return self._client

    def _post_as_get(self, url: str) -> requests.Response:
        # RFC 8555 6.3: a POST with an empty payload reads a resource.
        new_nonce = self.client.directory["newNonce"]
        response: requests.Response = self._net.post(url, None, new_nonce_url=new_nonce)
        return response

    # --- accounts (RFC 8555 7.3) ------------------------------------------------------------

    def find_account(self) -> str | None:
        """The URL of this key's account, or None when the upstream has none (7.3.1)."""
        lookup = messages.NewRegistration(only_return_existing=True, terms_of_service_agreed=True)
        url, new_nonce = self.client.directory["newAccount"], self.client.directory["newNonce"]
        try:
            response = self._call(
                "account lookup", lambda: self._net.post(url, lookup, new_nonce_url=new_nonce)
            )
        except UpstreamError as exc:
            if exc.problem == "accountDoesNotExist":
                return None
            raise
        location = response.headers.get("Location")
        if not location:
            raise UpstreamError("malformedResponse", "account lookup answered no Location")
        self._use_account(location)
        return str(location)

    def register(self) -> str:
        """Find the account, or create it with External Account Binding when configured."""
        found = self.find_account()
        if found is not None:
            return found
        client = self.client
        contact = (self.config.contact,) if self.config.contact else ()
        eab: Mapping[str, Any] | None = None
        if self.config.eab_kid and self.config.eab_hmac_key:
            try:
                eab = messages.ExternalAccountBinding.from_data(
                    account_public_key=self._jwk.public_key(),
                    kid=self.config.eab_kid,
                    hmac_key=self.config.eab_hmac_key,
                    directory=client.directory,
                )
            except (ValueError, TypeError) as exc:
                raise UpstreamError("malformed", f"the EAB HMAC key is unusable: {exc}") from None
        registration = messages.NewRegistration(
            contact=contact,
            terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            regr = self._call("new account", lambda: client.new_account(registration))
        except errors.ConflictError as exc:  # a race: the account exists after all
            self._use_account(str(exc))
            return str(exc)
        self._use_account(regr.uri)
        return str(regr.uri)

    # --- orders (RFC 8555 7.4) ---------------------------------------------------------------

    def new_order(self, csr_pem: str, replaces: str | None = None) -> OrderSnapshot:
        """newOrder for the CSR's identifiers (the CSR names exactly the order's names), with
        RFC 9773 `replaces` (the ARI certID of the certificate it renews) when given."""
        client = self.client
        if replaces is None:
            orderr = self._call("new order", lambda: client.new_order(csr_pem.encode("ascii")))
            return _order(orderr.uri, orderr.body)
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name)
            for name in sans.get_values_for_type(x509.DNSName)
        ] + [
            messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(ip))
            for ip in sans.get_values_for_type(x509.IPAddress)
        ]
        body = _NewOrderReplacing(identifiers=identifiers, replaces=replaces)
        url, new_nonce = client.directory["newOrder"], client.directory["newNonce"]
        response = self._call(
            "new order", lambda: self._net.post(url, body, new_nonce_url=new_nonce)
        )
        parsed = self._call("new order", lambda: messages.Order.from_json(response.json()))
        return _order(response.headers.get("Location"), parsed)

    @property
    def renewal_info_url(self) -> str | None:
        """The directory's RFC 9773 `renewalInfo` URL; None when the upstream has no ARI."""
        try:
            return str(self.client.directory["renewalInfo"])
        except KeyError:
            return None

    def renewal_window(self, cert_id: str) -> RenewalWindow | None:
        """GET renewalInfo/<certID> (RFC 9773 4.2, unauthenticated); None without ARI."""
        base = self.renewal_info_url
        if base is None:
            return None
        url = base.rstrip("/") + "/" + cert_id
        response = self._call("renewalInfo", lambda: self._net.get(url))
        info = self._call("renewalInfo", lambda: messages.RenewalInfo.from_json(response.json()))
        window = info.suggested_window
        return RenewalWindow(start=window.start, end=window.end)

    def order(self, url: str) -> OrderSnapshot:
        response = self._call("order", lambda: self._post_as_get(url))
        body = self._call("order", lambda: messages.Order.from_json(response.json()))
        return _order(url, body)

    def authorization(self, url: str) -> AuthzSnapshot:
        response = self._call("authorization", lambda: self._post_as_get(url))
        body = self._call(
            "authorization", lambda: messages.Authorization.from_json(response.json())
        )
        return _authz(url, body)

    def answer_http01(self, authz_url: str) -> None:
        """Tell the upstream the http-01 response is published (RFC 8555 7.5.1)."""
        self._answer(authz_url, challenges.HTTP01)

    def answer_dns01(self, authz_url: str) -> None:
        """Tell the upstream the dns-01 TXT value is published (RFC 8555 7.5.1, 8.4)."""
        self._answer(authz_url, challenges.DNS01)

    def _answer(self, authz_url: str, kind: type[challenges.KeyAuthorizationChallenge]) -> None:
        response = self._call("authorization", lambda: self._post_as_get(authz_url))
        body = self._call(
            "authorization", lambda: messages.Authorization.from_json(response.json())
        )
        challb = next((c for c in body.challenges if isinstance(c.chall, kind)), None)
        if challb is None:
            raise UpstreamError("malformedResponse", f"the authorization offers no {kind.typ}")
        client = self.client
        self._call(
            "answer challenge",
            lambda: client.answer_challenge(challb, challb.chall.response(self._jwk)),
        )

    def deactivate_authorization(self, url: str) -> AuthzSnapshot:
        """Give up an authorization (RFC 8555 7.5.2): status `deactivated`. One that is no
        longer pending or valid is left as it is and returned as read."""
        response = self._call("authorization", lambda: self._post_as_get(url))
        body = self._call(
            "authorization", lambda: messages.Authorization.from_json(response.json())
        )
        if body.status not in (messages.STATUS_PENDING, messages.STATUS_VALID):
            return _authz(url, body)
        client = self.client
        done = self._call(
            "deactivate authorization",
            lambda: client.deactivate_authorization(
                messages.AuthorizationResource(body=body, uri=url)
            ),
        )
        return _authz(url, done.body)

    @property
    def caa_identities(self) -> tuple[str, ...]:
        """The CAA issuer domains the CA recognises (RFC 8555 7.1.1 `meta.caaIdentities`),
        else the configured ones (RFC 8659 4.2)."""
        meta = self.client.directory.meta
        found = tuple(meta.caa_identities or ()) if meta is not None else ()
        return found or self.config.caa_identities

    def finalize(self, order_url: str, csr_pem: str) -> OrderSnapshot:
        """Send the CSR (RFC 8555 7.4); a repeat answers orderNotReady, so it is idempotent."""
        current = self.order(order_url)
        body = messages.Order(
            status=messages.Status.from_json(current.status), finalize=current.finalize
        )
        orderr = messages.OrderResource(body=body, uri=order_url, csr_pem=csr_pem.encode("ascii"))
        client = self.client
        done = self._call("finalize", lambda: client.begin_finalization(orderr))
        return _order(order_url, done.body)

    def revoke(self, certificate_pem: str, reason: int) -> None:
        """revokeCert with this account's key (RFC 8555 7.6) and a CRLReason code."""
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        client = self.client
        self._call("revokeCert", lambda: client.revoke(certificate, reason))

    def certificate_chain(self, url: str) -> str:
        """The PEM chain (RFC 8555 7.4.2): leaf first."""
        response = self._call("certificate", lambda: self._post_as_get(url))
        return str(response.text)


def _order(url: str | None, body: messages.Order) -> OrderSnapshot:
    if not url:
        raise UpstreamError("malformedResponse", "the order has no URL (no Location header)")
    return OrderSnapshot(
        url=url,
        status=str(body.status.name) if body.status else "pending",
        authorizations=tuple(body.authorizations or ()),
        finalize=body.finalize,
        certificate=body.certificate,
        expires=body.expires,
        error=_problem_text(body.error),
    )


def _authz(url: str, body: messages.Authorization) -> AuthzSnapshot:
    found = []
    for challb in body.challenges or ():
        keyed = isinstance(challb.chall, challenges.KeyAuthorizationChallenge)
        token = challb.chall.encode("token") if keyed else None  # http-01, dns-01 (8.3, 8.4)
        found.append(
            ChallengeSnapshot(
                type=str(challb.chall.typ),
                url=str(challb.uri),
                token=token,
                status=str(challb.status.name) if challb.status else "pending",
                error=_problem_text(challb.error),
            )
        )
    return AuthzSnapshot(
        url=url,
        identifier=str(body.identifier.value),
        identifier_type=str(body.identifier.typ.name),
        wildcard=bool(body.wildcard),
        status=str(body.status.name) if body.status else "pending",
        expires=body.expires,
        challenges=tuple(found),
    )


class UpstreamClients:
    """One `AcmeUpstream` per (upstream, account URL) and thread: a ClientNetwork holds one
    requests session and one nonce pool, and is not thread-safe."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, config: UpstreamConfig, key_pem: bytes, account_url: str) -> AcmeUpstream:
        cache: dict[tuple[str, str], AcmeUpstream] = getattr(self._local, "cache", None) or {}
        self._local.cache = cache
        found = cache.get((config.name, account_url))
        if found is None or found.config != config:
            found = AcmeUpstream(config, key_pem, account_url)
            cache[(config.name, account_url)] = found
        return found

    def forget(self, name: str) -> None:
        cache: dict[tuple[str, str], AcmeUpstream] = getattr(self._local, "cache", None) or {}
        for key in [k for k in cache if k[0] == name]:
            del cache[key]
