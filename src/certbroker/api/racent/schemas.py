"""Request and response fields of each endpoint, for the OpenAPI document.

The handlers read raw fields leniently (SPEC 1.2: strings for numbers, JSON strings for nested
data); these models only describe what clients send and get back.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

JsonText = str | dict[str, Any]
JsonList = str | list[dict[str, Any]]


class _Fields(BaseModel):
    model_config = ConfigDict(extra="allow")
    api_token: str = Field(description="The reseller's API token (SPEC 1.3).")


class ProductListFields(_Fields):
    vendor: str | None = Field(
        None,
        description="Brand filter, spelled exactly: Sectigo, sslTrus, Certum, Thawte, Digicert.",
    )


class OrderFields(_Fields):
    productCode: str = Field(description="Product code from productList.")
    years: int | str = Field(description="Subscription length in years (numbers as strings too).")
    refId: str | None = Field(
        None, description="Your reference; also the idempotency key of place."
    )
    params: JsonText = Field(
        description="Order information (SPEC 3.1) as a JSON string or an object: csr, privateKey, "
        "server, uniqueValue, dcvMethod, domainInfo, organizationInfo, Administrator, tech, "
        "finance, originalfromOthers; certbroker extension keyType (rsa2048, rsa3072, rsa4096, "
        "ec256, ec384) for the key it generates when no csr is sent."
    )


class CertIdFields(_Fields):
    certId: str = Field(description="The certificate's id as returned by place.")


class CancelFields(CertIdFields):
    reason: str = Field(description="Why the order is cancelled (free text).")


class RefIdFields(_Fields):
    refId: str = Field(description="The reference sent with place.")


class DcvEmailFields(_Fields):
    domainName: str | None = Field(None, description="Domain whose approver addresses to list.")
    domain: str | None = Field(None, description="Alias of domainName sent by the PHP SDK.")
    certId: str | None = Field(None, description="Optional certificate id.")


class CaaCheckFields(_Fields):
    domainName: str | None = Field(None, description="A name to check.")
    domains: str | None = Field(
        None, description="Several names: a JSON array or a comma-separated list."
    )
    domainInfo: str | None = Field(
        None, description="Several names as place takes them: [{domainName}, ...]."
    )


class LegacyDcvFields(_Fields):
    orderId: str = Field(description="certId (the legacy endpoints call it orderId).")
    domain: str | None = Field(None, description="validatedns: the domain.")


class UpdateDcvFields(CertIdFields):
    domainName: str | None = Field(None, description="The name to change (required when several).")
    dcvMethod: str = Field(description="HTTP_CSR_HASH, HTTPS_CSR_HASH, CNAME_CSR_HASH or EMAIL.")
    dcvEmail: str | None = Field(None, description="Approver address when dcvMethod is EMAIL.")


class BatchUpdateDcvFields(CertIdFields):
    dcvMethod: str | None = Field(None, description="One method for every pending name.")
    dcvEmail: str | None = Field(None, description="Approver address for EMAIL.")
    domainInfo: JsonList | None = Field(
        None,
        description="[{domainName, dcvMethod, dcvEmail}]; wins over dcvMethod. With "
        "neither, every pending name is checked again now.",
    )


class RemoveDomainFields(CertIdFields):
    domainName: str = Field(description="The name to remove; it must not be validated yet.")


class BatchRemoveFields(CertIdFields):
    domainName: str | None = Field(None, description="Ignored (clients send `*`).")


class ReissueFields(CertIdFields):
    reason: str | None = Field(
        None, description="Why the certificate is reissued (free text; default given)."
    )
    uniqueValue: str | None = Field(None, description="New uniqueValue (1-20 a-zA-Z0-9).")
    refId: str | None = Field(None, description="Your reference for the new certId.")
    csr: str | None = Field(
        None,
        description="New CSR (same names). Without one: a new key when certbroker held the "
        "key, else the old CSR.",
    )


class ReplaceFields(CertIdFields):
    refId: str | None = Field(None, description="Your reference for the new certId.")
    params: JsonText = Field(
        description="csr (required), domainInfo (required), uniqueValue, organizationInfo."
    )


class RenewFields(_Fields):
    renewId: str | None = Field(None, description="certId of the subscription being renewed.")
    certId: str | None = Field(None, description="Alias of renewId sent by some clients.")
    years: int | str | None = Field(
        None, description="Years of the new subscription (default: the renewed order's)."
    )
    refId: str | None = Field(None, description="Your reference; idempotency key as in place.")
    params: JsonText | None = Field(
        None,
        description="As for place (SPEC 3.1); csr optional. Default: the renewed order's "
        "params (a new key when certbroker held the key, else the same CSR).",
    )


class RevokeFields(CertIdFields):
    reason: str | None = Field(
        None,
        description="unspecified (0), keyCompromise (1), affiliationChanged (3), "
        "superseded (4) or cessationOfOperation (5); name or number.",
    )


class ListFields(_Fields):
    page: int | str | None = Field(None, description="Page number, from 1.")
    pageSize: int | str | None = Field(None, description="Rows per page, 1-200 (default 50).")
    status: str | None = Field(None, description="PENDING, COMPLETE, CANCELLED, ...")
    productCode: str | None = Field(None, description="Only this product.")
    domain: str | None = Field(None, description="Orders naming this domain or a name under it.")
    startDate: str | None = Field(None, description="Created on or after (YYYY-MM-DD).")
    endDate: str | None = Field(None, description="Created on or before (YYYY-MM-DD).")


class TokenOnlyFields(_Fields):
    pass


class WebhookSetFields(_Fields):
    """certbroker extension: the account's webhook."""

    url: str = Field(description="Callback URL (http or https, public address) for event POSTs.")
    secret: str | None = Field(
        None, description="Signing secret (16-200 printable ASCII); generated when none is set."
    )
    rotateSecret: bool | str | None = Field(
        None, description="1 to replace the current secret by a new generated one."
    )


class WebhookDeliveriesFields(_Fields):
    """certbroker extension: the webhook delivery log."""

    certId: str | None = Field(None, description="Only the events of this certificate.")
    limit: int | str | None = Field(None, description="At most this many (1-200, default 50).")


class Envelope(BaseModel):
    """Every answer: `code` 1 on success; `errors` a string or `{field: [messages]}` otherwise."""

    code: int = Field(
        description="1 success; -1 invalid input; -3 product/term; -4 balance; "
        "-7 certificate state; -8 already cancelled; 400 bad api_token."
    )
    status: str | None = Field(None, description="collect only: PENDING, COMPLETE, CANCELLED, ...")
    data: Any = Field(None, description="The payload on success.")
    errors: str | dict[str, list[str]] | None = Field(None, description="What went wrong.")
