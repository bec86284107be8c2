"""OCSP answers of the built-in CA (RFC 6960, RFC 5019 profile; BR 4.9.9, 4.9.10, 7.3).

Pure construction: the certificate status comes from a lookup the caller passes in
(orders/revocation_lists.py). Responses are signed when asked for, by the issuing CA itself
(BR 4.9.9 (1): no delegated responder, so no responder certificate to manage), with the hash
matching the CA key (BR 7.1.3.2) and a ResponderID byKey (SHA-1 of the key, RFC 6960 4.2.1).

What a request gets:
- `good`: a certificate this CA issued and has not revoked;
- `revoked`: revocationTime and, unless unspecified, revocationReason - the CRL entry's values;
- `unknown`: a serial this CA never issued (BR 4.9.10 "unused": never `good`; RFC 6960 2.2
  "unknown": the responder does not know the certificate). Signed, so a client can tell it from
  an attack, and answered at once instead of an error a client might read as a soft failure;
- the unsigned error `unauthorized` when the CertID names another CA (RFC 5019 2.2.3: this
  responder cannot answer for it), `malformedRequest` when the request cannot be read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from certbroker.issuance.crl import CaSigner, reason_flag
from certbroker.issuance.profile import signature_hash

# BR 4.9.10: validity interval between 8 hours and 10 days. Answers are made fresh for every
# request, so the interval is only how long a relying party may keep one.
OCSP_VALIDITY = timedelta(days=4)
# RFC 5019 2.1.1: a request holds one CertID; a few hundred bytes at most. More is not OCSP.
MAX_REQUEST_BYTES = 4096
# RFC 8954 2.1: echo nonces of up to 32 octets, refuse those over 128 as malformed.
MAX_ECHOED_NONCE = 32
MAX_ACCEPTED_NONCE = 128

Status = Literal["good", "revoked", "unknown"]


@dataclass(frozen=True)
class CertStatus:
    """What the CA's records say about one serial number."""

    state: Status
    revoked_at: datetime | None = None
    reason: int | None = None  # RFC 5280 CRLReason; None or 0 = unspecified

    @classmethod
    def good(cls) -> CertStatus:
        return cls("good")

    @classmethod
    def unknown(cls) -> CertStatus:
        return cls("unknown")


@dataclass(frozen=True)
class OcspAnswer:
    der: bytes
    response_status: ocsp.OCSPResponseStatus
    cert_status: Status | None = None  # None for the unsigned error answers
    this_update: datetime | None = None
    next_update: datetime | None = None
    nonce_echoed: bool = False  # an answer to this request only: not for shared caches

    @property
    def cacheable(self) -> bool:
        """RFC 5019 6.2: a definite signed answer without a nonce may be served from caches."""
        return self.cert_status in ("good", "revoked") and not self.nonce_echoed


class MalformedRequestError(ValueError):
    pass


def error_answer(status: ocsp.OCSPResponseStatus) -> OcspAnswer:
    der = ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )
    return OcspAnswer(der=der, response_status=status)


def decode_get_request(encoded: str) -> bytes:
    """The DER request from the last part of a GET URL: url-encoded base64 (RFC 6960 A.1).

    The server has already percent-decoded the path; what is left of a second encoding, the
    base64url alphabet, missing padding and whitespace are tolerated as clients produce them."""
    text = unquote(encoded) if "%" in encoded else encoded
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    if not text or len(text) > MAX_REQUEST_BYTES * 2:
        raise MalformedRequestError("no request in the URL")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequestError(f"the URL does not hold base64: {exc}") from None


def _key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value, which RFC 6960 4.1.1 issuerKeyHash hashes."""
    key = certificate.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    raise ValueError(f"unsupported CA key type {type(key).__name__}")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    hasher = hashes.Hash(algorithm)
    hasher.update(data)
    return hasher.finalize()


def names_issuer(request: ocsp.OCSPRequest, certificate: x509.Certificate) -> bool:
    """True when the request's CertID names `certificate` as the issuer (RFC 6960 4.1.1)."""
    try:
        algorithm = request.hash_algorithm
    except UnsupportedAlgorithm:
        return False
    return request.issuer_name_hash == _digest(
        algorithm, certificate.subject.public_bytes()
    ) and request.issuer_key_hash == _digest(algorithm, _key_bits(certificate))


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None
    if not nonce or len(nonce) > MAX_ACCEPTED_NONCE:
        raise MalformedRequestError(f"nonce of {len(nonce)} octets")
    return nonce if len(nonce) <= MAX_ECHOED_NONCE else None


def respond(
    signer: CaSigner,
    request_der: bytes,
    lookup: Callable[[int], CertStatus],
    now: datetime,
) -> OcspAnswer:
    """The answer of `signer`'s responder to one DER OCSPRequest."""
    if len(request_der) > MAX_REQUEST_BYTES:
        return error_answer(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        nonce = _nonce(request)
    except (ValueError, NotImplementedError):  # NotImplementedError: several CertIDs
        return error_answer(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    if not names_issuer(request, signer.certificate):
        return error_answer(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    status = lookup(request.serial_number)
    this_update = now.replace(microsecond=0)
    next_update = this_update + OCSP_VALIDITY
    revoked = status.state == "revoked"
    revoked_at = status.revoked_at if revoked else None
    if revoked and revoked_at is None:
        raise ValueError("a revoked status needs its revocation time")
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=request.issuer_name_hash,
        issuer_key_hash=request.issuer_key_hash,
        serial_number=request.serial_number,
        algorithm=request.hash_algorithm,  # the CertID must match the request's byte for byte
        cert_status={
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[status.state],
        this_update=this_update,
        next_update=next_update,
        revocation_time=revoked_at.replace(microsecond=0) if revoked_at else None,
        # BR 7.3: the reason is in RevokedInfo only, never a singleExtensions reasonCode.
        revocation_reason=reason_flag(status.reason) if revoked else None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.certificate)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    response = builder.sign(signer.key, signature_hash(signer.key))
    return OcspAnswer(
        der=response.public_bytes(serialization.Encoding.DER),
        response_status=ocsp.OCSPResponseStatus.SUCCESSFUL,
        cert_status=status.state,
        this_update=this_update,
        next_update=next_update,
        nonce_echoed=nonce is not None,
    )
