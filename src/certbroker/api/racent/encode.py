"""Typed order views → the field names and formats Racent clients read (SPEC 3.5, 4.3)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from certbroker.dns_delegation.labels import CHALLENGE_LABEL
from certbroker.orders.dcv import DcvBlock
from certbroker.orders.issuing import CAA_PREFIX
from certbroker.orders.reuse import REUSE_PREFIX
from certbroker.orders.views import NameView, OrderView


def wire_date(moment: datetime | None, utc_offset_hours: int) -> str:
    """`YYYY-MM-DD HH:MM:SS` in the service's zone (China time by default, SPEC 1.5)."""
    if moment is None:
        return ""
    zone = timezone(timedelta(hours=utc_offset_hours))
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def dcv_fields(block: DcvBlock, file_path: str) -> dict[str, str]:
    return {
        "DCVfileName": block.file_name,
        "DCVfileContent": block.file_content,
        "DCVfilePath": file_path,
        "DCVdnsHost": block.dns_host,
        "DCVdnsValue": block.dns_value,
        "DCVdnsType": "CNAME",
    }


def acme_fields(name: NameView) -> dict[str, str]:
    """An upstream ACME product's file fields (RFC 8555 8.3): the token, the http-01 URL
    (always port 80; the CA follows redirects to https) and the key authorization; empty
    until the worker has placed the upstream order. A dns-01 name (RFC 8555 8.4) shows the
    persistent CNAME instead, known from place on: `_acme-challenge` (relative to the name
    without `*.`) to `<label>.<zone>.`, one record for a wildcard and its base domain."""
    if name.acme_dns_target is not None:
        return {
            "DCVfileName": "",
            "DCVfileContent": "",
            "DCVfilePath": "",
            "DCVdnsHost": CHALLENGE_LABEL,
            "DCVdnsValue": name.acme_dns_target,
            "DCVdnsType": "CNAME",
        }
    token = name.acme_token or ""
    host = name.name[2:] if name.name.startswith("*.") else name.name
    return {
        "DCVfileName": token,
        "DCVfileContent": name.acme_key_authorization or "",
        "DCVfilePath": f"http://{host}/.well-known/acme-challenge/{token}" if token else "",
        "DCVdnsHost": "",
        "DCVdnsValue": "",
        "DCVdnsType": "",
    }


def dcv_output(view: OrderView) -> dict[str, Any]:
    """The DCV block of the primary name plus `dcvInfo` per name (their file URLs differ)."""
    if view.upstream:
        out: dict[str, Any] = dict(acme_fields(view.names[0])) if view.names else {}
        out["dcvInfo"] = {n.name: acme_fields(n) for n in view.names}
        return out
    primary = view.names[0].file_url if view.names else ""
    out = dict[str, Any](dcv_fields(view.dcv, primary))
    out["dcvInfo"] = {n.name: dcv_fields(view.dcv, n.file_url) for n in view.names}
    return out


def _is_rsa(certificate_pem: str) -> bool:
    # The certificate's key is the order's key; parsing it is cheaper than the private key.
    cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    return isinstance(cert.public_key(), rsa.RSAPublicKey)


def _vendor_ids(view: OrderView) -> dict[str, str]:
    """vendorId / vendorCertId stay numeric text, as clients store them (the newest upstream
    order's id here); the upstream's own identifiers are URLs, in extension fields."""
    ref = view.upstream_order
    if ref is None:
        return {"vendorId": "", "vendorCertId": ""}
    return {
        "vendorId": str(ref.id),
        "vendorCertId": str(ref.id) if ref.certificate_url else "",
        "upstreamOrderUrl": ref.order_url or "",
        "upstreamCertUrl": ref.certificate_url or "",
    }


def placed(view: OrderView) -> dict[str, Any]:
    return {
        "certId": view.cert_id,
        **_vendor_ids(view),
        "orderNum": view.order_num,
        **dcv_output(view),
    }


def collect(view: OrderView, utc_offset_hours: int) -> dict[str, Any]:
    def date(moment: datetime | None) -> str:
        return wire_date(moment, utc_offset_hours)

    data: dict[str, Any] = {
        "certId": view.cert_id,
        "orderNum": view.order_num,
        # Also top-level; some clients read it only here.
        "status": view.status,
        **_vendor_ids(view),
        "productCode": view.product_code,
        # The validation type, as productList's validationType (dv, ov, ev).
        "productType": view.validation_level,
        "applyTime": date(view.created_at),
        "dueDate": date(view.due_at),
        **dcv_output(view),
        "dcvList": [
            {
                "domainName": n.name,
                "dcvMethod": n.method,
                "dcvEmail": n.email or "",
                "is_verify": "verified" if n.verified else "",
                # certbroker extensions: why a name is not verified yet, and when it is retried.
                "verifiedBy": n.verified_how or "",
                "reused": (n.verified_how or "").startswith(REUSE_PREFIX),
                "lastCheckTime": date(n.last_checked_at),
                # A verified name can still hold issuance back: CAA is read right before signing.
                "lastError": (n.last_result or "")
                if not n.verified or (n.last_result or "").startswith(CAA_PREFIX)
                else "",
                "nextCheckTime": "" if n.verified else date(n.next_check_at),
            }
            for n in view.names
        ],
        # An upstream order not placed yet (the worker's next pass) leaves the file fields empty.
        "application": {
            "status": "processing" if view.upstream and not view.upstream_ordered else "done"
        },
        "dcv": {"status": view.stage_dcv},
        "ov": {"status": view.stage_ov, "note": view.ov_note or ""},
        "issued": {"status": view.stage_issued},
        "applyParams": view.apply_params,
        "certPath": "",
        # certbroker extension: why the CA refused to sign (the order FAILED, or a subscription's
        # automatic reissue was dropped), or why an upstream CA's order waits and when it is
        # retried (docs/UPSTREAMS.md); "" otherwise.
        "lastError": view.last_error or "",
    }
    # The spelling of clients written against older answers of the live service.
    data["DCVInfo"] = data["dcvInfo"]
    if view.failure_reason:
        data["failureReason"] = view.failure_reason
    if view.history:
        # certbroker extension: every certificate of the subscription under this certId.
        data["certificateHistory"] = [
            {
                "serialNumber": c.serial_hex,
                "beginDate": date(c.not_before),
                "endDate": date(c.not_after),
                "revoked": c.revoked_at is not None,
            }
            for c in view.history
        ]
    issued = view.issued
    if issued is not None:
        data.update(
            {
                "certificate": issued.certificate,
                "caCertificate": issued.ca_certificate,
                "beginDate": date(issued.not_before),
                "endDate": date(issued.not_after),
                "serialNumber": issued.serial_hex,
            }
        )
        if issued.private_key is not None:
            data["privateKey"] = issued.private_key
            if _is_rsa(issued.certificate):
                # Older clients read the key under this name; it only ever named RSA keys.
                data["rsaPrivateKey"] = issued.private_key
        if issued.pkcs12 is not None:
            data.update(
                {
                    "pkcs12": issued.pkcs12,
                    "pkcsPass": issued.pkcs12_password,
                    "jks": issued.jks,
                    "jksPass": issued.jks_password,
                }
            )
    return data
