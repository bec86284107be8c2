"""Shapes real clients send that the SPEC puts elsewhere or omits (docs/API.md, "Tolerated
shapes"), each tried in every body style with the field names those clients use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.models import Event
from tests.conftest import Service
from tests.helpers.body_styles import STYLES, post

NAME = "shop.example.com"
DOMAIN_INFO = [{"domainName": NAME, "dcvMethod": "HTTP_CSR_HASH"}]
PARAMS = {"server": "nginx", "domainInfo": DOMAIN_INFO}


def _call(service: Service, style: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    return post(service.client, style, endpoint, service.token, **fields)


def _issue(service: Service) -> str:
    placed = service.call("place", productCode="comodo-ssl", years=1, params=PARAMS)
    assert placed["code"] == 1, placed
    service.publish(placed["data"])
    service.work()
    cert_id: str = placed["data"]["certId"]
    assert service.call("collect", certId=cert_id)["status"] == "COMPLETE"
    return cert_id


def _events(service: Service, kind: str) -> list[dict[str, Any]]:
    with service.ctx.db.transaction() as session:
        return [e.payload for e in session.scalars(select(Event).where(Event.type == kind))]


def test_reissue_without_reason_and_through_place(service: Service) -> None:
    service.topup(1000)
    current = _issue(service)
    for style in STYLES:
        for endpoint, extra in (("reissue", {}), ("place", {"reason": "new key"})):
            answer = _call(service, style, endpoint, certId=current, **extra)
            assert answer["code"] == 1, (style, endpoint, answer)
            assert service.call("collect", certId=current)["status"] == "REISSUED"
            current = answer["data"]["certId"]
            service.work()  # validation is reused: the new certificate is issued at once
            assert service.call("collect", certId=current)["status"] == "COMPLETE"
    reasons = [e["reason"] for e in _events(service, "certificate.reissued")]
    assert reasons == ["reissue requested", "new key"] * len(STYLES)


def test_revoke_with_a_free_text_reason_is_unspecified_with_the_note(service: Service) -> None:
    service.topup(1000)
    for style in STYLES:
        cert_id = _issue(service)
        text = "Customer requested revocation"
        answer = _call(service, style, "revoke", certId=cert_id, reason=text)
        assert answer["code"] == 1, answer
    notes = [(e["reason"], e.get("note")) for e in _events(service, "certificate.revoked")]
    assert notes == [(0, "Customer requested revocation")] * len(STYLES)
    for style in STYLES:
        other = _call(service, style, "revoke", certId=_issue(service), reason="certificateHold")
        assert other["code"] == -1 and list(other["errors"]) == ["reason"]


def test_update_dcv_with_only_a_domain_info_array(service: Service) -> None:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=1, params=PARAMS)["data"]
    methods = ("CNAME_CSR_HASH", "HTTPS_CSR_HASH", "HTTP_CSR_HASH")
    for style, method in zip(STYLES, methods, strict=True):
        answer = _call(
            service,
            style,
            "updateDCV",
            certId=placed["certId"],
            domainInfo=[{"domainName": NAME, "dcvMethod": method}],
        )
        assert answer["code"] == 1, answer
        assert answer["data"]["dcvList"][0]["dcvMethod"] == method


def test_validate_with_csr_and_domain_info_at_top_level_and_no_years(service: Service) -> None:
    service.topup(100)
    csr = build_csr(generate_private_key("ec256"), [NAME]).pem
    other = build_csr(generate_private_key("ec256"), ["other.example.com"]).pem
    for style in STYLES:
        ok = _call(
            service,
            style,
            "validate",
            productCode="comodo-ssl",
            server="nginx",
            csr=csr,
            domainInfo=DOMAIN_INFO,
        )
        assert ok == {"code": 1}, (style, ok)
        # The top-level CSR is checked, not ignored: one for other names is refused.
        bad = _call(
            service,
            style,
            "validate",
            productCode="comodo-ssl",
            server="nginx",
            csr=other,
            domainInfo=DOMAIN_INFO,
        )
        assert bad["code"] == -1 and "csr" in bad["errors"], bad


def test_place_uses_a_top_level_csr_and_refuses_two_different_ones(service: Service) -> None:
    service.topup(100)
    for style in STYLES:
        csr = build_csr(generate_private_key("ec256"), [NAME]).pem
        placed = _call(
            service, style, "place", productCode="comodo-ssl", years=1, csr=csr, params=PARAMS
        )
        assert placed["code"] == 1, placed
        collected = service.call("collect", certId=placed["data"]["certId"])["data"]
        assert collected["applyParams"]["csr"].split() == csr.split()
        assert "privateKey" not in collected  # the customer's key: nothing generated
        same = _call(
            service,
            style,
            "validate",
            productCode="comodo-ssl",
            years=1,
            csr=csr,
            params={**PARAMS, "csr": csr},
        )
        assert same == {"code": 1}
        other = build_csr(generate_private_key("ec256"), [NAME]).pem
        before = service.counts()
        both = _call(
            service,
            style,
            "place",
            productCode="comodo-ssl",
            years=1,
            csr=other,
            params={**PARAMS, "csr": csr},
        )
        assert both["code"] == -1 and list(both["errors"]) == ["csr"], both
        assert service.counts() == before


def test_get_cert_by_ref_id_answers_like_collect(service: Service) -> None:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=1, refId="ERP-7", params=PARAMS)[
        "data"
    ]
    for style in STYLES:
        found = _call(service, style, "getCertByRefId", refId="ERP-7")
        assert found["code"] == 1 and found["status"] == "PENDING"
        assert found["data"]["certId"] == placed["certId"]
        assert found["data"]["DCVfileName"] == placed["DCVfileName"]
        missing = _call(service, style, "getCertByRefId", refId="nope")
        assert missing["code"] == -1 and list(missing["errors"]) == ["refId"]


def test_renew_with_only_the_cert_id_takes_the_renewed_orders_term_and_params(
    service: Service,
) -> None:
    service.topup(1000)
    for style in STYLES:
        # A key certbroker made: the renewal gets a new key of the same type.
        held = service.call(
            "place", productCode="comodo-ssl", years=1, params={**PARAMS, "keyType": "ec256"}
        )
        # The customer's CSR: the renewal asks for the same CSR again.
        csr = build_csr(generate_private_key("ec256"), [NAME]).pem
        own = service.call(
            "place", productCode="comodo-ssl", years=1, params={**PARAMS, "csr": csr}
        )
        old = [held["data"]["certId"], own["data"]["certId"]]
        for placed in (held, own):
            service.publish(placed["data"])
        service.work()
        for cert_id in old:
            assert service.call("collect", certId=cert_id)["status"] == "COMPLETE"
        service.advance(timedelta(days=365 - 60))  # inside the renewal window
        balance = service.balance()
        answers = [
            _call(service, style, "renew", certId=old[0]),
            _call(service, style, "renew", renewId=old[1]),
        ]
        for answer in answers:
            assert answer["code"] == 1, (style, answer)
        new = [service.call("collect", certId=a["data"]["certId"])["data"] for a in answers]
        echoed = [{**DOMAIN_INFO[0], "dcvEmail": ""}]
        assert [n["applyParams"]["domainInfo"] for n in new] == [echoed, echoed]
        assert new[1]["applyParams"]["csr"].strip() == csr.strip(), "the customer's CSR again"
        old_csr = service.call("collect", certId=old[0])["data"]["applyParams"]["csr"]
        assert new[0]["applyParams"]["csr"] != old_csr, "a new key where certbroker held one"
        assert "BEGIN PRIVATE KEY" not in str(new[0]["applyParams"])
        assert service.balance() == balance - 2 * 12_00, "the renewed orders' 1-year term"


def test_caa_check_says_per_name_whether_this_ca_may_issue(service: Service) -> None:
    service.dns_server.add_caa("other-ca.example.com", ("issue", "other-ca.example.net"))
    service.dns_server.add_caa("ours.example.com", ("issue", "certbroker.example.com"))
    try:
        for style in STYLES:
            for fields in (
                {"domainName": "Ours.Example.com,other-ca.example.com"},
                {"domains": ["ours.example.com", "other-ca.example.com"]},
                {
                    "domainInfo": [
                        {"domainName": "ours.example.com"},
                        {"domainName": "other-ca.example.com"},
                    ]
                },
            ):
                answer = _call(service, style, "caaCheck", **fields)
                assert answer["code"] == 1, (style, fields, answer)
                ours, other = answer["data"]
                assert (ours["domainName"], ours["allowed"]) == ("ours.example.com", 1)
                assert (other["domainName"], other["allowed"]) == ("other-ca.example.com", 0)
                assert "other-ca.example.net" in other["reason"]
            internal = _call(service, style, "caaCheck", domainName="nas.corp")
            assert internal["code"] == 1
            [verdict] = internal["data"]
            assert verdict["allowed"] == 0 and "internal names" in verdict["reason"]
            assert _call(service, style, "caaCheck")["code"] == -1
    finally:
        service.dns_server.clear_caa("other-ca.example.com")
        service.dns_server.clear_caa("ours.example.com")
