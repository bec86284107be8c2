"""Relying-party endpoints of the built-in CA, at the URLs its certificates carry
(issuance/hierarchy.py): CA certificates (AIA caIssuers), CRLs (CRL distribution points) and
OCSP (AIA ocsp, RFC 6960 A.1: GET with the request in the URL, or POST).

Plain HTTP answers with DER bodies, never the Racent JSON envelope: these are fetched by TLS
clients, not resellers. OCSP errors are OCSP responses (malformedRequest, unauthorized) with
HTTP 200, as RFC 6960 carries them; an unknown CA in the URL is a plain 404.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from email.utils import format_datetime
from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from certbroker.issuance import ocsp
from certbroker.issuance.hierarchy import FILE_STEMS, ROOT_OF, CaName
from certbroker.orders import revocation_lists
from certbroker.orders.context import OrdersContext

CERT_TYPE = "application/pkix-cert"  # RFC 2585 4.1
CRL_TYPE = "application/pkix-crl"  # RFC 2585 4.2
OCSP_RESPONSE_TYPE = "application/ocsp-response"  # RFC 6960 A.1
CA_CERT_MAX_AGE = 86400
# CRLs and OCSP answers change when a certificate is revoked: shared caches keep them an hour
# at most, whatever their nextUpdate, so a revocation reaches relying parties quickly.
MAX_AGE = 3600


def _not_found() -> Response:
    return Response("unknown CA\n", status_code=404, media_type="text/plain")


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def _max_age(next_update: datetime, now: datetime) -> int:
    return max(0, min(MAX_AGE, int((next_update - now).total_seconds())))


def _ca_certificates(ctx: OrdersContext) -> dict[str, bytes]:
    """DER of each CA certificate by its URL stem."""
    der: dict[CaName, bytes] = {}
    for issuer_name, root_name in ROOT_OF.items():
        issuer = ctx.ca.issuer(issuer_name == "sandbox")
        der[issuer_name] = issuer.certificate.public_bytes(Encoding.DER)
        root = x509.load_pem_x509_certificate(issuer.root_pem.encode("ascii"))
        der[root_name] = root.public_bytes(Encoding.DER)
    return {FILE_STEMS[ca]: value for ca, value in der.items()}


def _ocsp_response(answer: ocsp.OcspAnswer, now: datetime) -> Response:
    headers = {"Cache-Control": "no-store"}
    if answer.cacheable and answer.this_update and answer.next_update:
        # RFC 5019 6.2.
        headers = {
            "Cache-Control": f"max-age={_max_age(answer.next_update, now)}, public, "
            "no-transform, must-revalidate",
            "Last-Modified": _http_date(answer.this_update),
            "Expires": _http_date(answer.next_update),
            "ETag": f'"{hashlib.sha256(answer.der).hexdigest()[:40]}"',
        }
    return Response(answer.der, media_type=OCSP_RESPONSE_TYPE, headers=headers)


def pki_router(ctx: OrdersContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)  # not part of the reseller API
    certificates = _ca_certificates(ctx)

    @router.api_route("/ca/{stem}.der", methods=["GET", "HEAD"])
    def ca_certificate(stem: str) -> Response:
        der = certificates.get(stem)
        if der is None:
            return _not_found()
        return Response(
            der,
            media_type=CERT_TYPE,
            headers={"Cache-Control": f"public, max-age={CA_CERT_MAX_AGE}"},
        )

    @router.api_route("/crl/{stem}.crl", methods=["GET", "HEAD"])
    def crl(stem: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
        ca = revocation_lists.CA_OF_STEM.get(stem)
        if ca is None:
            return _not_found()
        now = ctx.clock.now()
        published = revocation_lists.current_crl(ctx, ca)
        headers = {
            "Cache-Control": f"public, max-age={_max_age(published.next_update, now)}, "
            "no-transform",
            "Last-Modified": _http_date(published.this_update),
            "ETag": f'"crl-{published.number}"',
        }
        if if_none_match is not None and headers["ETag"] in if_none_match:
            return Response(status_code=304, headers=headers)
        return Response(published.der, media_type=CRL_TYPE, headers=headers)

    def answer(stem: str, request_der: bytes | None) -> Response:
        ca = revocation_lists.CA_OF_STEM.get(stem)
        if ca not in ("production", "sandbox"):
            return _not_found()  # the roots have no OCSP responder: their CRLs cover the CAs
        now = ctx.clock.now()
        if request_der is None:
            result = ocsp.error_answer(x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        else:
            issuer = ctx.ca.issuer(ca == "sandbox")
            result = ocsp.respond(
                issuer,
                request_der,
                lambda serial: revocation_lists.certificate_status(ctx, issuer.name, serial),
                now,
            )
        return _ocsp_response(result, now)

    async def read_body(request: Request) -> bytes | None:
        """The POSTed request, None when it is larger than any OCSP request can be."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > ocsp.MAX_REQUEST_BYTES:
                return None
        return body

    @router.post("/ocsp/{stem}")
    async def ocsp_post(stem: str, request: Request) -> Response:
        return await run_in_threadpool(answer, stem, await read_body(request))

    @router.api_route("/ocsp/{stem}/{encoded:path}", methods=["GET", "POST"])
    async def ocsp_get(stem: str, encoded: str, request: Request) -> Response:
        if request.method == "POST":  # a client that appended a slash to the URL
            return await run_in_threadpool(answer, stem, await read_body(request))
        try:
            request_der: bytes | None = ocsp.decode_get_request(encoded)
        except ocsp.MalformedRequestError:
            request_der = None
        return await run_in_threadpool(answer, stem, request_der)

    @router.get("/ocsp/{stem}")
    def ocsp_bare(stem: str) -> Response:
        return answer(stem, None)  # a GET without a request

    return router
