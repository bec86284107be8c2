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
        None, description="[{domainName, dcvMethod, dcvEmail}]; wins over dcvMethod. With "
        "neither, every pending name is checked again now."
    )


class RemoveDomainFields(CertIdFields):
    domainName: str = Field(description="The name to remove; it must not be validated yet.")


class BatchRemoveFields(CertIdFields):
    domainName: str | None = Field(None, description="Ignored (clients send `*`).")


class TokenOnlyFields(_Fields):
    pass


class Envelope(BaseModel):
    """Every answer: `code` 1 on success; `errors` a string or `{field: [messages]}` otherwise."""

    code: int = Field(
        description="1 success; -1 invalid input; -3 product/term; -4 balance; "
        "-7 certificate state; -8 already cancelled; 400 bad api_token."
    )
    status: str | None = Field(None, description="collect only: PENDING, COMPLETE, CANCELLED, ...")
    data: Any = Field(None, description="The payload on success.")
    errors: str | dict[str, list[str]] | None = Field(None, description="What went wrong.")
