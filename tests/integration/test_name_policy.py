"""The name policy at the API: each name of the table is accepted or refused with its rule, at
`validate` and at `place`; a refused name charges and stores nothing; every accepted name is
issued end to end and appears in the certificate in its canonical form (IDNs as A-labels).

Plain names are validated for real (HTTP file on the loopback web server, which the test DNS
server points every name at). Public IP addresses cannot be reached from this machine and a
wildcard cannot use a file, so those are ordered from a sandbox account, which skips DCV but
signs through the same certificate profile and policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography import x509

from certbroker.policy.names import NamePolicy, NameRule, refusal
from tests.conftest import Service

BLOCKED = "blocked-brand.com"
# name -> canonical form when accepted, or the rule that refuses it
TABLE: list[tuple[str, str | NameRule]] = [
    # accepted
    ("shop.example.com", "shop.example.com"),
    ("Shop.Example.COM", "shop.example.com"),  # mixed case
    ("shop.example.com.", "shop.example.com"),  # trailing dot (absolute name)
    ("www.example.co.uk", "www.example.co.uk"),
    ("example.co.uk", "example.co.uk"),
    ("user.github.io", "user.github.io"),  # under a private-section suffix
    ("a.b.c.example.org", "a.b.c.example.org"),
    ("123.example.com", "123.example.com"),
    ("x.city.kawasaki.jp", "x.city.kawasaki.jp"),  # PSL exception rule
    ("xn--bcher-kva.example.com", "xn--bcher-kva.example.com"),  # valid A-label
    ("bücher.example.com", "xn--bcher-kva.example.com"),  # U-label
    ("BÜCHER.Example.com", "xn--bcher-kva.example.com"),  # mixed-case U-label
    ("straße.example.de", "xn--strae-oqa.example.de"),  # IDNA 2008 keeps ß
    ("münchen.de", "xn--mnchen-3ya.de"),
    ("例え.jp", "xn--r8jz45g.jp"),
    ("магазин.рф", "xn--80aairftm.xn--p1ai"),  # IDN TLD
    ("shop.xn--p1ai", "shop.xn--p1ai"),
    ("*.example.com", "*.example.com"),
    ("*.shop.example.co.uk", "*.shop.example.co.uk"),
    ("*.user.github.io", "*.user.github.io"),
    ("*.bücher.example.com", "*.xn--bcher-kva.example.com"),
    ("8.8.8.8", "8.8.8.8"),
    ("1.1.1.1", "1.1.1.1"),
    ("2606:4700:4700::1111", "2606:4700:4700::1111"),
    ("2001:4860:4860:0:0:0:0:8888", "2001:4860:4860::8888"),
    # special-use and reserved domains (RFC 6761, 6762, 7686, 8375, 9476, .internal)
    ("shop.test", "special-use"),
    ("a.b.test", "special-use"),
    ("printer.local", "special-use"),
    ("app.localhost", "special-use"),
    ("x.invalid", "special-use"),
    ("www.example", "special-use"),
    ("duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion", "special-use"),
    ("x.alt", "special-use"),
    ("svc.internal", "special-use"),
    ("router.home.arpa", "special-use"),
    ("1.0.0.127.in-addr.arpa", "special-use"),
    ("*.svc.internal", "special-use"),
    # not under an ICANN TLD: internal names (BR 4.2.2)
    ("mail.corp", "internal-name"),
    ("nas.lan", "internal-name"),
    ("portal.intranet", "internal-name"),
    ("host.home", "internal-name"),
    ("shop.notarealtld", "internal-name"),
    ("*.shop.corp", "internal-name"),
    # public suffixes themselves, and wildcards right under them (BR 3.2.2.6)
    ("co.uk", "public-suffix"),
    ("com.au", "public-suffix"),
    ("github.io", "public-suffix"),
    ("blogspot.com", "public-suffix"),
    ("*.co.uk", "wildcard-suffix"),
    ("*.com.au", "wildcard-suffix"),
    ("*.github.io", "wildcard-suffix"),
    ("*.blogspot.com", "wildcard-suffix"),
    # malformed, IDNA included
    ("*.com", "malformed"),
    ("www.*.example.com", "malformed"),
    ("xn--bcher-kva5a6e.example.com", "malformed"),  # not valid IDNA 2008
    ("xn--n3h.example.com", "malformed"),  # A-label of a disallowed code point
    ("☃.example.com", "malformed"),  # U-label of a disallowed code point
    ("a_b.example.com", "malformed"),
    ("-a.example.com", "malformed"),
    ("example..com", "malformed"),
    ("localhost", "malformed"),
    # reserved IP addresses (BR 7.1.2.7.12)
    ("127.0.0.1", "reserved-ip"),
    ("10.0.0.1", "reserved-ip"),
    ("192.168.1.1", "reserved-ip"),
    ("169.254.169.254", "reserved-ip"),
    ("100.64.0.1", "reserved-ip"),
    ("192.0.2.1", "reserved-ip"),
    ("224.0.0.1", "reserved-ip"),
    ("::1", "reserved-ip"),
    ("fe80::1", "reserved-ip"),
    ("2001:db8::1", "reserved-ip"),
    # the operator's blocklist
    (f"login.{BLOCKED}", "blocked"),
]
RULES = {
    "malformed",
    "special-use",
    "internal-name",
    "public-suffix",
    "wildcard-suffix",
    "reserved-ip",
    "blocked",
}


def _order(name: str) -> tuple[str, dict[str, Any]]:
    """Product and params for one name: IPs on the IP product, wildcards by DNS."""
    if ":" in name or name.replace(".", "").isdigit():
        product, method = "ssltrus-multi-domain-dv", "HTTP_CSR_HASH"
    elif name.startswith("*."):
        product, method = "comodo-positive-multi-domain-wildcard", "CNAME_CSR_HASH"
    else:
        product, method = "comodo-ssl", "HTTP_CSR_HASH"
    params = {
        "server": "nginx",
        "keyType": "ec256",
        "domainInfo": [{"domainName": name, "dcvMethod": method}],
    }
    return product, params


def _needs_sandbox(canonical: str) -> bool:
    return canonical.startswith("*.") or ":" in canonical or canonical.replace(".", "").isdigit()


def test_the_table_covers_every_rule() -> None:
    assert len(TABLE) >= 60
    assert {v for _, v in TABLE if v in RULES} == RULES
    assert sum(1 for _, v in TABLE if v not in RULES) >= 20


def test_each_name_is_accepted_or_refused_with_its_rule_and_issued_end_to_end(
    service: Service,
) -> None:
    names = NamePolicy(blocked=(BLOCKED,))
    service.ctx.policy = dataclasses.replace(service.ctx.policy, names=names)
    service.ctx.ca.names_policy = names
    sandbox_id, sandbox_token = service.new_account("sandbox", sandbox=True)
    service.topup(10_000)
    service.topup(10_000, sandbox_id)

    placed: dict[str, tuple[str, str]] = {}  # name -> (certId, canonical)
    for name, verdict in TABLE:
        product, params = _order(name)
        expected = None if verdict not in RULES else refusal(name, names)
        if expected is not None:
            assert expected.rule == verdict, (name, expected.rule, expected.reason)
        token = sandbox_token if _needs_sandbox(verdict) else None
        before = service.balance(sandbox_id), service.balance(), service.counts()

        checked = service.call("validate", token, productCode=product, years="1", params=params)
        result = service.call("place", token, productCode=product, years="1", params=params)
        if expected is not None:
            for answer in (checked, result):
                assert answer["code"] == -1, (name, answer)
                assert answer["errors"] == {"domainInfo.0.domainName": [expected.reason]}, name
            assert (service.balance(sandbox_id), service.balance(), service.counts()) == before
            continue
        assert checked["code"] == 1, (name, checked)
        assert result["code"] == 1, (name, result)
        if token is None:
            service.publish(result["data"])
        placed[name] = (result["data"]["certId"], verdict)

    for _ in range(5):  # a pass issues a batch of orders at most
        if service.work() == 0:
            break
    for name, (cert_id, canonical) in placed.items():
        token = sandbox_token if _needs_sandbox(canonical) else None
        done = service.call("collect", token, certId=cert_id)
        assert done["status"] == "COMPLETE", (name, done)
        leaf = x509.load_pem_x509_certificate(done["data"]["certificate"].encode())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        carried = [str(v) for v in san.get_values_for_type(x509.IPAddress)] + list(
            san.get_values_for_type(x509.DNSName)
        )
        assert carried[0] == canonical, (name, carried)
        if canonical.startswith("*."):
            assert carried == [canonical, canonical[2:]], "a wildcard certifies its base too"
        else:
            assert carried == [canonical], (name, carried)
