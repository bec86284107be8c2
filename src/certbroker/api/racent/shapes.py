"""Shapes real clients send that the SPEC puts elsewhere (docs/API.md, "Tolerated shapes").

Decoding only: each function moves a field to where orders/ expects it, or refuses a request
whose two copies of one field disagree (never a silent choice between them)."""

from __future__ import annotations

from typing import Any

from certbroker.api.racent.decoding import text_field
from certbroker.orders.errors import ApiError
from certbroker.orders.params import decode_json_field, decode_params

Fields = dict[str, Any]


def _same_pem(a: str, b: str) -> bool:
    return "".join(a.split()) == "".join(b.split())


def params_with_top_level(fields: Fields, *, domain_info: bool = False) -> object:
    """`params` with a top-level `csr` (and `domainInfo`, `server`) moved inside when absent
    there.

    A CSR sent both ways must be the same CSR: -1 on `csr` otherwise."""
    csr = text_field(fields, "csr")
    top_domains = fields.get("domainInfo") if domain_info else None
    server = text_field(fields, "server") if domain_info else None
    if csr is None and top_domains in (None, "") and server is None:
        return fields.get("params")
    raw = fields.get("params")
    params: dict[str, object] = {} if raw in (None, "") else dict(decode_params(raw))
    if csr is not None:
        inner = params.get("csr")
        if isinstance(inner, str) and inner.strip():
            if not _same_pem(inner, csr):
                raise ApiError.invalid(
                    "csr", "csr is sent at the top level and in params, and they differ; send one"
                )
        else:
            params["csr"] = csr
    if top_domains not in (None, "") and params.get("domainInfo") in (None, "", []):
        params["domainInfo"] = decode_json_field(top_domains, "domainInfo", list)
    if server is not None and params.get("server") in (None, ""):
        params["server"] = server
    return params
