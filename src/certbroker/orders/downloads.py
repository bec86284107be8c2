"""certPath (SPEC 4.3): a zip of the issued certificate laid out for common servers, behind an
unguessable expiring URL. Only for keys the platform holds: without a key nothing installs."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta

from certbroker.orders.context import OrdersContext
from certbroker.orders.views import Issued
from certbroker.pki.secretbox import SecretBoxError

LINK_LIFETIME = timedelta(hours=24)
_CONTEXT = b"certbroker download link"


@dataclass(frozen=True)
class DownloadGrant:
    cert_id: str
    account_id: int


def make_token(ctx: OrdersContext, account_id: int, cert_id: str, now: datetime) -> str:
    claims = {"c": cert_id, "a": account_id, "e": int((now + LINK_LIFETIME).timestamp())}
    sealed = ctx.box.encrypt(json.dumps(claims).encode("utf-8"), context=_CONTEXT)
    return base64.urlsafe_b64encode(sealed.encode("ascii")).decode("ascii").rstrip("=")


def open_token(ctx: OrdersContext, token: str, now: datetime) -> DownloadGrant | None:
    """The grant in a link, or None when it is forged, damaged or expired."""
    try:
        padded = token + "=" * (-len(token) % 4)
        sealed = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        claims = json.loads(ctx.box.decrypt(sealed, context=_CONTEXT))
        expires = int(claims["e"])
        grant = DownloadGrant(cert_id=str(claims["c"]), account_id=int(claims["a"]))
    except (ValueError, KeyError, TypeError, UnicodeError, SecretBoxError):
        return None
    if now.timestamp() > expires:
        return None
    return grant


def build_zip(cert_id: str, issued: Issued) -> bytes:
    """nginx: fullchain + key; apache: certificate, chain, key; IIS: PFX; tomcat: JKS."""
    assert issued.private_key is not None
    fullchain = issued.certificate.rstrip("\n") + "\n" + issued.ca_certificate
    files: dict[str, str | bytes] = {
        f"nginx/{cert_id}.fullchain.pem": fullchain,
        f"nginx/{cert_id}.key": issued.private_key,
        f"apache/{cert_id}.crt": issued.certificate,
        f"apache/{cert_id}.ca-bundle": issued.ca_certificate,
        f"apache/{cert_id}.key": issued.private_key,
    }
    if issued.pkcs12 and issued.pkcs12_password:
        files[f"iis/{cert_id}.pfx"] = base64.b64decode(issued.pkcs12)
        files["iis/password.txt"] = issued.pkcs12_password + "\n"
    if issued.jks and issued.jks_password:
        files[f"tomcat/{cert_id}.jks"] = base64.b64decode(issued.jks)
        files["tomcat/password.txt"] = issued.jks_password + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()
