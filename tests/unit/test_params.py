"""Order `params` decoding and checks (SPEC 3.1-3.4, Appendix D and G)."""

from __future__ import annotations

import json

import pytest

from certbroker.catalog.catalog import Catalog, Product
from certbroker.orders.approvers import approver_addresses
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.params import (
    DCV_METHODS,
    SERVER_CODES,
    Contact,
    DomainRequest,
    Organization,
    decode_json_field,
    decode_params,
    parse_order_params,
)

CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----\n"
# SPEC 3.4, from the SDK doc comment
SDK_ORGANIZATION = json.loads(
    '{"organizationCity":"上海","organizationName":"上海锐成","organizationMobile":"18111111111",'
    '"organizationAddress":"上海市静安区x路","organizationCountry":"CN",'
    '"organizationPostCode":"401320"}'
)
# SPEC 3.2 example
SPEC_DOMAIN_INFO = (
    '[{"domainName":"www.example.com","dcvMethod":"EMAIL",'
    '"dcvEmail":"admin@example.com"},'
    '{"domainName":"example.com","dcvMethod":"CNAME_CSR_HASH"}]'
)
CONTACT = {
    "firstName": "San",
    "lastName": "Zhang",
    "job": "IT Manager",
    "email": "it@example.com",
    "mobile": "18111111111",
    "organation": "上海锐成",
    "address": "上海市静安区x路",
    "city": "上海",
    "state": "上海",
    "postCode": "401320",
    "country": "CN",
    "idType": "TYDMZ",
}

CATALOG = Catalog.load_default()


def product(code: str) -> Product:
    return CATALOG.require(code)


def dv(**extra: object) -> dict[str, object]:
    params: dict[str, object] = {
        "server": "nginx",
        "domainInfo": [{"domainName": "www.example.com", "dcvMethod": "CNAME_CSR_HASH"}],
    }
    params.update(extra)
    return params


def ov(**extra: object) -> dict[str, object]:
    params = dv(
        organizationInfo=dict(SDK_ORGANIZATION),
        Administrator=dict(CONTACT),
        tech=dict(CONTACT),
        finance=dict(CONTACT),
    )
    params.update(extra)
    return params


def names(*domains: str, method: str = "CNAME_CSR_HASH") -> list[dict[str, str]]:
    return [{"domainName": d, "dcvMethod": method} for d in domains]


def errors_of(
    raw: object, code: str = "comodo-ssl", *, csr_required: bool = False, replace: bool = False
) -> object:
    with pytest.raises(ApiError) as info:
        parse_order_params(raw, product(code), csr_required=csr_required, replace=replace)
    assert info.value.code == Code.INVALID
    return info.value.errors


# --- realistic payloads pass -----------------------------------------------------------------


def test_spec_ov_payload_passes() -> None:
    raw = json.dumps(
        {
            "csr": CSR,
            "server": "apache2",
            "uniqueValue": "abc123",
            "domainInfo": SPEC_DOMAIN_INFO,  # nested JSON string, as form clients send it
            "organizationInfo": SDK_ORGANIZATION,
            "Administrator": CONTACT,
            "tech": CONTACT,
            "finance": CONTACT,
            "originalfromOthers": "0",
        },
        ensure_ascii=False,
    )
    result = parse_order_params(raw, product("sectigo-ov-multi-san"))
    assert result.domains == (
        DomainRequest("www.example.com", "EMAIL", "admin@example.com"),
        DomainRequest("example.com", "CNAME_CSR_HASH", None),
    )
    assert result.organization == Organization(
        organization_name="上海锐成",
        organization_address="上海市静安区x路",
        organization_city="上海",
        organization_country="CN",
        organization_post_code="401320",
        organization_mobile="18111111111",
    )
    assert (
        result.administrator
        == result.tech
        == result.finance
        == Contact(
            first_name="San",
            last_name="Zhang",
            job="IT Manager",
            email="it@example.com",
            mobile="18111111111",
            organation="上海锐成",
            address="上海市静安区x路",
            city="上海",
            state="上海",
            post_code="401320",
            country="CN",
            id_type="TYDMZ",
        )
    )
    assert (result.csr, result.server, result.unique_value) == (CSR.strip(), "apache2", "abc123")
    assert result.original_from_others is False
    assert result.key_spec is None  # a CSR was sent


def test_sdk_organization_example_passes_for_single_ov() -> None:
    result = parse_order_params(ov(), product("sectigo-ov"))
    assert result.organization is not None
    assert result.organization.organization_name == "上海锐成"
    assert result.organization.to_wire() == SDK_ORGANIZATION


def test_minimal_dv_defaults() -> None:
    result = parse_order_params(json.dumps(dv()), product("comodo-ssl"))
    assert result.domains == (DomainRequest("www.example.com", "CNAME_CSR_HASH", None),)
    assert (result.csr, result.private_key, result.organization, result.administrator) == (
        None,
        None,
        None,
        None,
    )
    assert result.key_spec is None  # not sent: the orders policy default applies
    assert result.original_from_others is False


def test_to_apply_params_round_trips() -> None:
    params = ov(
        csr=CSR, uniqueValue="Abc9", domainInfo=json.loads(SPEC_DOMAIN_INFO), privateKey=KEY
    )
    first = parse_order_params(params, product("sectigo-ov-multi-san"))
    echo = first.to_apply_params()
    assert set(echo) == {
        "csr",
        "server",
        "domainInfo",
        "Administrator",
        "tech",
        "finance",
        "organizationInfo",
        "uniqueValue",
    }  # never the private key
    assert echo["domainInfo"] == [
        {"domainName": "www.example.com", "dcvMethod": "EMAIL", "dcvEmail": "admin@example.com"},
        {"domainName": "example.com", "dcvMethod": "CNAME_CSR_HASH", "dcvEmail": ""},
    ]
    assert echo["Administrator"] == CONTACT
    again = parse_order_params(json.dumps(echo), product("sectigo-ov-multi-san"))
    assert again == parse_order_params(
        {**params, "privateKey": ""}, product("sectigo-ov-multi-san")
    )


def test_all_problems_reported_at_once() -> None:
    errors = errors_of(
        {"server": "NGINX", "uniqueValue": "a-b", "domainInfo": names("*.example.com")},
        "sectigo-ov",
    )
    assert isinstance(errors, dict)
    assert set(errors) == {
        "server",
        "uniqueValue",
        "domainInfo.0.domainName",
        "organizationInfo",
        "Administrator",
        "tech",
        "finance",
    }


# --- params / JSON decoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "params is required: a JSON object (or a JSON-encoded string holding one)"),
        ("  ", "params is required: a JSON object (or a JSON-encoded string holding one)"),
        (
            "server=nginx",
            "params must be a JSON object; the string is not valid JSON "
            "(Expecting value at line 1 column 1)",
        ),
        (
            '{"server": "nginx"',
            "params must be a JSON object; the string is not valid JSON "
            "(Expecting ’,’ delimiter at line 1 column 19)",
        ),
        ("[1, 2]", "params must be a JSON object, got an array"),
        ('"text"', "params must be a JSON object, got a string"),
        ([{"server": "nginx"}], "params must be a JSON object, got an array"),
        (42, "params must be a JSON object, got a number"),
        ('{"a": NaN}', "params must be a JSON object; the string is not valid JSON"),
        (
            "[" * 100_000 + "]" * 100_000,
            "params must be a JSON object; the string is not valid JSON",
        ),
        ("{}" + " " * (1024 * 1024), "params is 1048578 characters long; at most 1048576 allowed"),
    ],
)
def test_decode_params_rejects(raw: object, message: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_params(raw)
    assert info.value.code == Code.INVALID
    assert info.value.errors == {"params": [message]}


def test_decode_params_accepts_string_and_dict() -> None:
    assert decode_params('{"server": "nginx"}') == {"server": "nginx"}
    assert decode_params({"server": "nginx"}) == {"server": "nginx"}


def test_decode_json_field() -> None:
    assert decode_json_field('[{"domainName": "a.com"}]', "domainInfo", list) == [
        {"domainName": "a.com"}
    ]
    assert decode_json_field([1], "domainInfo", list) == [1]
    with pytest.raises(ApiError) as info:
        decode_json_field('{"domainName": "a.com"}', "domainInfo", list)
    assert info.value.errors == {"domainInfo": ["domainInfo must be a JSON array, got an object"]}


def test_unknown_keys_ignored_and_empty_strings_absent() -> None:
    result = parse_order_params(
        dv(
            colour="red",
            csr="",
            privateKey="",
            uniqueValue="",
            organizationInfo="",
            Administrator={},
            keyType="",
        ),
        product("comodo-ssl"),
    )
    assert (result.csr, result.unique_value, result.organization, result.administrator) == (
        None,
        None,
        None,
        None,
    )
    assert result.key_spec is None


# --- server (Appendix D) ---------------------------------------------------------------------


def test_server_codes_list() -> None:
    assert len(SERVER_CODES) == 29
    assert SERVER_CODES[-1] == "cpanel"
    assert all(code == code.lower() for code in SERVER_CODES)


@pytest.mark.parametrize("code", SERVER_CODES)
def test_every_server_code_accepted(code: str) -> None:
    assert parse_order_params(dv(server=code), product("comodo-ssl")).server == code


ALL_SERVERS = ", ".join(SERVER_CODES)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (None, "server is required: a web-server platform code; use other when none applies"),
        ("", "server is required: a web-server platform code; use other when none applies"),
        (
            "NGINX",
            "server NGINX is not a supported platform code (codes are lower-case: nginx); "
            f"use one of {ALL_SERVERS}",
        ),
        ("lighttpd", f"server lighttpd is not a supported platform code; use one of {ALL_SERVERS}"),
        (["nginx"], "server must be a string, got an array"),
    ],
)
def test_server_rejected(server: object, message: str) -> None:
    assert errors_of(dv(server=server)) == {"server": [message]}


def test_server_optional_on_replace() -> None:
    result = parse_order_params(dv(server=None, csr=CSR), product("comodo-ssl"), replace=True)
    assert result.server is None


# --- domainInfo shape ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain_info", "field", "message"),
    [
        (
            None,
            "domainInfo",
            "domainInfo is required: a JSON array with one "
            "{domainName, dcvMethod, dcvEmail} object per name",
        ),
        (
            "",
            "domainInfo",
            "domainInfo is required: a JSON array with one "
            "{domainName, dcvMethod, dcvEmail} object per name",
        ),
        ([], "domainInfo", "domainInfo must contain at least one domain"),
        ("[]", "domainInfo", "domainInfo must contain at least one domain"),
        (
            "www.example.com",
            "domainInfo",
            "domainInfo must be a JSON array; the string is not "
            "valid JSON (Expecting value at line 1 column 1)",
        ),
        ({"domainName": "a.com"}, "domainInfo", "domainInfo must be a JSON array, got an object"),
        (
            ["www.example.com"],
            "domainInfo.0",
            "each domainInfo entry must be an object with domainName, got a string",
        ),
        ([{"dcvMethod": "CNAME_CSR_HASH"}], "domainInfo.0.domainName", "domainName is required"),
        (
            [{"domainName": " ", "dcvMethod": "CNAME_CSR_HASH"}],
            "domainInfo.0.domainName",
            "domainName is required",
        ),
        (
            [{"domainName": 7, "dcvMethod": "CNAME_CSR_HASH"}],
            "domainInfo.0.domainName",
            "‘7’ is not a fully qualified domain name (needs a dot)",
        ),
        (
            names(*(f"d{i}.example.com" for i in range(1001))),
            "domainInfo",
            "domainInfo has 1001 entries; at most 1000 are accepted",
        ),
    ],
)
def test_domain_info_shape(domain_info: object, field: str, message: str) -> None:
    assert errors_of(dv(domainInfo=domain_info)) == {field: [message]}


def test_domain_name_stripped_and_lower_cased() -> None:
    result = parse_order_params(dv(domainInfo=names(" WWW.Example.COM ")), product("comodo-ssl"))
    assert result.domains[0].name == "www.example.com"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("localhost", "is not a fully qualified domain name"),
        ("example..com", "has an empty label"),
        (".example.com", "has an empty label"),
        ("-a.example.com", "label ‘-a’ starts or ends with a hyphen"),
        ("a-.example.com", "label ‘a-’ starts or ends with a hyphen"),
        ("a_b.example.com", "label ‘a_b’ contains ‘_’; only letters, digits and hyphens"),
        ("exa mple.com", "label ‘exa mple’ contains ‘ ’"),
        ("http://example.com", "label ‘http://example’ contains ‘:’"),
        ("a" * 64 + ".com", "is 64 characters; at most 63 allowed"),
        (".".join(["a" * 63] * 4), "name is 255 characters; at most 253 allowed"),
        ("www.*.example.com", "‘*’ is only allowed as the whole leftmost label"),
        ("*.*.example.com", "label ‘*’ contains ‘*’"),
        ("w*.example.com", "‘*’ is only allowed as the whole leftmost label"),
        ("*.com", "a wildcard needs at least two labels after ‘*.’"),
        ("xn--bcher-kva5a6e.de", "is not a valid IDNA 2008 A-label"),
        ("1.2.3.4.5", "the top-level label ‘5’ is all-numeric"),
        ("256.1.1.1", "the top-level label ‘1’ is all-numeric"),
        ("fe80::1%eth0", "an IPv6 zone id (%...) is not allowed"),
        ("shop.example.corp", "internal names cannot be certified (BR 4.2.2)"),
        ("co.uk", "co.uk is a public suffix"),
    ],
)
def test_domain_name_syntax(name: str, reason: str) -> None:
    errors = errors_of(dv(domainInfo=names(name)))
    assert isinstance(errors, dict)
    assert list(errors) == ["domainInfo.0.domainName"]
    (message,) = errors["domainInfo.0.domainName"]
    assert reason in message


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("example.com", "example.com"),
        ("example.com.", "example.com"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("Bücher.de", "xn--bcher-kva.de"),
        ("a-b.c-d.example.com", "a-b.c-d.example.com"),
        ("123.example.com", "123.example.com"),
        ("www.example.co.uk", "www.example.co.uk"),
    ],
)
def test_domain_name_syntax_accepts(name: str, canonical: str) -> None:
    parsed = parse_order_params(dv(domainInfo=names(name)), product("comodo-ssl"))
    assert parsed.domains[0].name == canonical


def test_control_characters_rejected() -> None:
    assert errors_of(dv(domainInfo=names("example.com\x00"))) == {
        "domainInfo.0.domainName": ["domainName contains control characters"]
    }


def test_duplicate_names() -> None:
    assert errors_of(
        dv(domainInfo=names("a.example.com", "b.example.com", "A.example.COM")),
        "sectigo-multi-domain",
    ) == {"domainInfo.2.domainName": ["a.example.com is listed twice (domainInfo entries 0 and 2)"]}


def test_duplicate_ipv6_spellings() -> None:
    assert errors_of(
        dv(domainInfo=names("2606:4700::1", "2606:4700:0:0::1", method="HTTP_CSR_HASH")),
        "ssltrus-multi-domain-dv",
    ) == {
        "domainInfo.1.domainName": ["2606:4700::1 is listed twice (domainInfo entries 0 and 1)"]
    }


# --- dcvMethod -------------------------------------------------------------------------------


def test_dcv_methods_constant() -> None:
    assert DCV_METHODS == ("HTTP_CSR_HASH", "HTTPS_CSR_HASH", "CNAME_CSR_HASH", "EMAIL")


ALL_METHODS = "HTTP_CSR_HASH, HTTPS_CSR_HASH, CNAME_CSR_HASH, EMAIL"


@pytest.mark.parametrize(
    ("code", "entry", "message"),
    [
        (
            "comodo-ssl",
            {"domainName": "example.com"},
            f"dcvMethod is required (per domain or as params.dcvMethod); use one of {ALL_METHODS}",
        ),
        (
            "comodo-ssl",
            {"domainName": "example.com", "dcvMethod": "VERIFY_DOCUMENT"},
            f"dcvMethod VERIFY_DOCUMENT is not supported by this product; use one of {ALL_METHODS}",
        ),
        (
            "comodo-ssl",
            {"domainName": "example.com", "dcvMethod": "DNS_CSR_HASH"},
            f"dcvMethod DNS_CSR_HASH is not supported by this product; use one of {ALL_METHODS}",
        ),
        (
            "sectigo-free-trial",
            {"domainName": "example.com", "dcvMethod": "EMAIL", "dcvEmail": "admin@example.com"},
            "dcvMethod EMAIL is not supported by this product; use one of HTTP_CSR_HASH, "
            "HTTPS_CSR_HASH, CNAME_CSR_HASH",
        ),
        (
            "certum-dv-ssl",
            {"domainName": "example.com", "dcvMethod": "HTTPS_CSR_HASH"},
            "dcvMethod HTTPS_CSR_HASH is not supported by this product; use one of HTTP_CSR_HASH, "
            "CNAME_CSR_HASH, EMAIL",
        ),
        (
            "comodo-wildcard-ssl-certificate",
            {"domainName": "*.example.com", "dcvMethod": "HTTP_CSR_HASH"},
            "HTTP_CSR_HASH cannot validate the wildcard name *.example.com (BR 3.2.2.4.18); use "
            "CNAME_CSR_HASH or EMAIL",
        ),
        (
            "comodo-wildcard-ssl-certificate",
            {"domainName": "*.example.com", "dcvMethod": "HTTPS_CSR_HASH"},
            "HTTPS_CSR_HASH cannot validate the wildcard name *.example.com (BR 3.2.2.4.18); use "
            "CNAME_CSR_HASH or EMAIL",
        ),
        (
            "ssltrus-multi-domain-dv",
            {"domainName": "1.1.1.1", "dcvMethod": "CNAME_CSR_HASH"},
            "CNAME_CSR_HASH cannot validate the IP address 1.1.1.1 (BR 3.2.2.5); "
            "use HTTP_CSR_HASH or HTTPS_CSR_HASH",
        ),
        (
            "ssltrus-multi-domain-dv",
            {"domainName": "1.1.1.1", "dcvMethod": "EMAIL", "dcvEmail": "admin@1.1.1.1"},
            "EMAIL cannot validate the IP address 1.1.1.1 (BR 3.2.2.5); use HTTP_CSR_HASH "
            "or HTTPS_CSR_HASH",
        ),
    ],
)
def test_dcv_method_rejected(code: str, entry: dict[str, str], message: str) -> None:
    assert errors_of(dv(domainInfo=[entry]), code) == {"domainInfo.0.dcvMethod": [message]}


def test_dcv_method_global_and_per_domain_wins() -> None:
    info = [
        {"domainName": "a.example.com"},
        {"domainName": "b.example.com", "dcvMethod": "HTTP_CSR_HASH"},
        {"domainName": "c.example.com", "dcvMethod": ""},
    ]
    result = parse_order_params(
        dv(domainInfo=info, dcvMethod="CNAME_CSR_HASH"), product("sectigo-multi-domain")
    )
    assert [d.dcv_method for d in result.domains] == [
        "CNAME_CSR_HASH",
        "HTTP_CSR_HASH",
        "CNAME_CSR_HASH",
    ]


def test_dcv_method_case_insensitive() -> None:
    result = parse_order_params(
        dv(domainInfo=names("example.com", method="http_csr_hash")), product("comodo-ssl")
    )
    assert result.domains[0].dcv_method == "HTTP_CSR_HASH"


def test_bad_global_dcv_method_reported_once() -> None:
    info = [{"domainName": "a.example.com"}, {"domainName": "b.example.com"}]
    assert errors_of(dv(domainInfo=info, dcvMethod="FAX"), "sectigo-multi-domain") == {
        "dcvMethod": [f"dcvMethod FAX is not supported by this product; use one of {ALL_METHODS}"]
    }


def test_global_file_method_with_wildcard_reported_per_name() -> None:
    info = [{"domainName": "*.example.com"}, {"domainName": "example.com"}]
    assert errors_of(
        dv(domainInfo=info, dcvMethod="HTTP_CSR_HASH"), "comodo-wildcard-ssl-certificate"
    ) == {
        "domainInfo.0.dcvMethod": [
            "HTTP_CSR_HASH cannot validate the wildcard name *.example.com (BR 3.2.2.4.18); "
            "use CNAME_CSR_HASH or EMAIL"
        ]
    }


def test_ip_may_use_http_file() -> None:
    result = parse_order_params(
        dv(domainInfo=names("1.1.1.1", "2606:4700::1", method="HTTP_CSR_HASH")),
        product("ssltrus-multi-domain-dv"),
    )
    assert [d.name for d in result.domains] == ["1.1.1.1", "2606:4700::1"]


# --- dcvEmail --------------------------------------------------------------------------------


def email_entry(name: str, email: object) -> list[dict[str, object]]:
    return [{"domainName": name, "dcvMethod": "EMAIL", "dcvEmail": email}]


def test_approver_addresses() -> None:
    assert approver_addresses("www.example.com") == [
        "admin@www.example.com",
        "administrator@www.example.com",
        "webmaster@www.example.com",
        "hostmaster@www.example.com",
        "postmaster@www.example.com",
        "admin@example.com",
        "administrator@example.com",
        "webmaster@example.com",
        "hostmaster@example.com",
        "postmaster@example.com",
    ]
    assert approver_addresses("*.example.com") == approver_addresses("example.com")
    assert all(not e.endswith("@com") for e in approver_addresses("a.b.example.com"))


@pytest.mark.parametrize(
    ("name", "email"),
    [
        ("www.example.com", "admin@www.example.com"),
        ("www.example.com", "postmaster@example.com"),
        ("www.example.com", "Hostmaster@Example.COM"),
        ("*.example.com", "webmaster@example.com"),
        ("example.com", "administrator@example.com"),
    ],
)
def test_dcv_email_accepted(name: str, email: str) -> None:
    code = "comodo-wildcard-ssl-certificate" if name.startswith("*.") else "comodo-ssl"
    result = parse_order_params(dv(domainInfo=email_entry(name, email)), product(code))
    assert result.domains[0].dcv_email == email.lower()


FIVE_AT_EXAMPLE = (
    "admin@example.com, administrator@example.com, webmaster@example.com, "
    "hostmaster@example.com, postmaster@example.com"
)


@pytest.mark.parametrize(
    ("name", "email", "message"),
    [
        (
            "example.com",
            None,
            f"dcvEmail is required when dcvMethod is EMAIL; use one of {FIVE_AT_EXAMPLE}",
        ),
        (
            "example.com",
            "",
            f"dcvEmail is required when dcvMethod is EMAIL; use one of {FIVE_AT_EXAMPLE}",
        ),
        (
            "example.com",
            "info@example.com",
            f"dcvEmail info@example.com is not an approver address for example.com; use one of "
            f"{FIVE_AT_EXAMPLE}",
        ),
        (
            "example.com",
            "admin@com",
            f"dcvEmail admin@com is not an approver address for example.com; use one of "
            f"{FIVE_AT_EXAMPLE}",
        ),
        (
            "example.com",
            "admin@other.com",
            f"dcvEmail admin@other.com is not an approver address for example.com; use one of "
            f"{FIVE_AT_EXAMPLE}",
        ),
        (
            "example.com",
            "admin@www.example.com",  # a child is not a parent
            "dcvEmail admin@www.example.com is not an approver address for example.com; "
            f"use one of "
            f"{FIVE_AT_EXAMPLE}",
        ),
    ],
)
def test_dcv_email_rejected(name: str, email: object, message: str) -> None:
    assert errors_of(dv(domainInfo=email_entry(name, email))) == {
        "domainInfo.0.dcvEmail": [message]
    }


def test_dcv_email_ignored_for_other_methods() -> None:
    info = [
        {
            "domainName": "example.com",
            "dcvMethod": "CNAME_CSR_HASH",
            "dcvEmail": "someone@elsewhere.net",
        }
    ]
    assert (
        parse_order_params(dv(domainInfo=info), product("comodo-ssl")).domains[0].dcv_email is None
    )


def test_dcv_email_key_uses_entry_index() -> None:
    info = names("a.example.com") + email_entry("b.example.com", "root@b.example.com")
    errors = errors_of(dv(domainInfo=info), "sectigo-multi-domain")
    assert isinstance(errors, dict)
    assert list(errors) == ["domainInfo.1.dcvEmail"]


# --- product rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "domains", "field", "message"),
    [
        (
            "comodo-ssl",
            ["*.example.com"],
            "domainInfo.0.domainName",
            "The product does not support wildcard type(*.example.com)",
        ),
        (
            "sectigo-multi-domain",
            ["a.example.com", "*.example.com"],
            "domainInfo.1.domainName",
            "The product does not support wildcard type(*.example.com)",
        ),
        (
            "comodo-wildcard-ssl-certificate",
            ["www.example.com"],
            "domainInfo.0.domainName",
            "The product does not support normal type(www.example.com)",
        ),
        (
            "comodo-wildcard-ssl-certificate",
            ["*.example.com", "www.example.com"],
            "domainInfo.1.domainName",
            "The product does not support normal type(www.example.com)",
        ),
        (
            "comodo-ssl",
            ["1.0.0.1"],
            "domainInfo.0.domainName",
            "The product does not support IP address type(1.0.0.1)",
        ),
        (
            "comodo-ssl",
            ["example.com", "www.example.com"],
            "domainInfo",
            "product comodo-ssl is a single-name certificate and does not support additional names "
            "(SAN); 2 names given",
        ),
        (
            "comodo-wildcard-ssl-certificate",
            ["*.example.com", "*.example.net"],
            "domainInfo",
            "product comodo-wildcard-ssl-certificate is a single-name certificate and does not "
            "support additional names (SAN); 2 names given (the base domain of a wildcard is "
            "included free)",
        ),
        (
            "sectigo-multi-free-trial",
            ["a.com", "b.com", "c.com", "d.com"],
            "domainInfo",
            "product sectigo-multi-free-trial covers at most 3 names; 4 given",
        ),
    ],
)
def test_product_rules(code: str, domains: list[str], field: str, message: str) -> None:
    assert errors_of(dv(domainInfo=names(*domains)), code) == {field: [message]}


def test_wildcard_product_includes_base_domain() -> None:
    result = parse_order_params(
        dv(domainInfo=names("*.example.com", "example.com")),
        product("comodo-wildcard-ssl-certificate"),
    )
    assert [d.name for d in result.domains] == ["*.example.com", "example.com"]


def test_base_domain_does_not_use_a_slot() -> None:
    # maxDomain 3: three billable names plus the free base of the wildcard
    domains = names("*.a.com", "a.com", "b.com", "c.com")
    result = parse_order_params(
        dv(domainInfo=domains), product("sectigo-multi-domain-wildcard-free-trial")
    )
    assert len(result.domains) == 4


def test_max_domain_accepts_exactly_the_limit() -> None:
    domains = names(*(f"d{i}.example.com" for i in range(100)))
    result = parse_order_params(dv(domainInfo=domains), product("ssltrus-multi-domain-dv"))
    assert len(result.domains) == 100
    assert errors_of(
        dv(domainInfo=[*domains, *names("x.example.com")]), "ssltrus-multi-domain-dv"
    ) == {"domainInfo": ["product ssltrus-multi-domain-dv covers at most 100 names; 101 given"]}


# --- uniqueValue, flags, keyType -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a" * 21, "uniqueValue is 21 characters long; at most 20 allowed"),
        ("abc-123", "uniqueValue may contain only the characters a-z, A-Z and 0-9"),
        ("åbc", "uniqueValue may contain only the characters a-z, A-Z and 0-9"),
        (True, "uniqueValue must be a string, got a boolean"),
    ],
)
def test_unique_value_rejected(value: object, message: str) -> None:
    assert errors_of(dv(uniqueValue=value)) == {"uniqueValue": [message]}


@pytest.mark.parametrize(
    ("value", "expected"), [("a" * 20, "a" * 20), ("Ab9", "Ab9"), (12345, "12345")]
)
def test_unique_value_accepted(value: object, expected: str) -> None:
    assert parse_order_params(dv(uniqueValue=value), product("comodo-ssl")).unique_value == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, False),
        (1, True),
        ("0", False),
        ("1", True),
        (True, True),
        (False, False),
        ("", False),
        (None, False),
    ],
)
def test_original_from_others(value: object, expected: bool) -> None:
    result = parse_order_params(dv(originalfromOthers=value), product("comodo-ssl"))
    assert result.original_from_others is expected


@pytest.mark.parametrize("value", [2, "yes", [1]])
def test_original_from_others_rejected(value: object) -> None:
    assert errors_of(dv(originalfromOthers=value)) == {
        "originalfromOthers": ["originalfromOthers must be 0 or 1"]
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("rsa2048", "rsa2048"),
        ("rsa3072", "rsa3072"),
        ("rsa4096", "rsa4096"),
        ("ec256", "ec256"),
        ("EC384", "ec384"),
        ("RSA", "rsa2048"),
        ("ECC", "ec256"),
        ("ECDSA", "ec256"),
    ],
)
def test_key_type(value: str, expected: str) -> None:
    assert parse_order_params(dv(keyType=value), product("comodo-ssl")).key_spec == expected


def test_key_type_rejected_and_ignored_with_csr() -> None:
    assert errors_of(dv(keyType="dsa1024")) == {
        "keyType": [
            "keyType dsa1024 is not supported; use one of rsa2048, rsa3072, rsa4096, ec256, ec384 "
            "(aliases: RSA, ECC, ECDSA)"
        ]
    }
    assert parse_order_params(dv(keyType="ec256", csr=CSR), product("comodo-ssl")).key_spec is None


# --- csr / privateKey ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "kwargs", "field", "message"),
    [
        ({}, {"csr_required": True}, "csr", "csr is required"),
        ({}, {"replace": True}, "csr", "csr is required"),
        (
            {"csr": "MIIB..."},
            {},
            "csr",
            "csr must be PEM text (-----BEGIN CERTIFICATE REQUEST-----)",
        ),
        ({"csr": {"pem": CSR}}, {}, "csr", "csr must be a string, got an object"),
        (
            {"csr": "-----BEGIN" + "A" * 32 * 1024},
            {},
            "csr",
            "csr is 32778 characters long; at most 32768 allowed",
        ),
        (
            {"privateKey": KEY},
            {},
            "privateKey",
            "privateKey can only be sent together with the csr it belongs to",
        ),
        (
            {"csr": CSR, "privateKey": "secret"},
            {},
            "privateKey",
            "privateKey must be PEM text (-----BEGIN PRIVATE KEY-----)",
        ),
    ],
)
def test_csr_rules(
    extra: dict[str, object], kwargs: dict[str, bool], field: str, message: str
) -> None:
    assert errors_of(dv(**extra), "comodo-ssl", **kwargs) == {field: [message]}


def test_csr_with_key_and_crlf_accepted() -> None:
    crlf = CSR.replace("\n", "\r\n")
    result = parse_order_params(
        dv(csr=crlf, privateKey=KEY), product("comodo-ssl"), csr_required=True
    )
    assert result.csr == crlf.strip()
    assert result.private_key == KEY.strip()


# --- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (dv(server="x" * 256), "server", "server is 256 characters long; at most 255 allowed"),
        (
            dv(dcvMethod="x" * 300),
            "dcvMethod",
            "dcvMethod is 300 characters long; at most 255 allowed",
        ),
        (
            dv(domainInfo=names("a" * 300)),
            "domainInfo.0.domainName",
            "domainName is 300 characters long; at most 255 allowed",
        ),
        (
            ov(organizationInfo={**SDK_ORGANIZATION, "organizationName": "n" * 256}),
            "organizationInfo.organizationName",
            "organizationName is 256 characters long; at most 255 allowed",
        ),
        (
            ov(tech={**CONTACT, "email": "e" * 256}),
            "tech",
            "The tech’s email is 256 characters long; at most 255 allowed",
        ),
    ],
)
def test_length_limits(params: dict[str, object], field: str, message: str) -> None:
    code = "sectigo-ov" if "organizationInfo" in params else "comodo-ssl"
    assert errors_of(params, code) == {field: [message]}


# --- organizationInfo (OV/EV) ----------------------------------------------------------------


def org_without(key: str) -> dict[str, object]:
    return {k: v for k, v in SDK_ORGANIZATION.items() if k != key}


@pytest.mark.parametrize(
    "organization", [None, "", {}, "{}", {"organizationName": "", "organizationMobile": " "}]
)
def test_organization_missing(organization: object) -> None:
    assert errors_of(ov(organizationInfo=organization), "sectigo-ov") == {
        "organizationInfo": ["organizationInfo is required"]
    }


@pytest.mark.parametrize(
    "key",
    [
        "organizationName",
        "organizationAddress",
        "organizationCity",
        "organizationCountry",
        "organizationPostCode",
        "organizationMobile",
    ],
)
def test_organization_each_required_key(key: str) -> None:
    assert errors_of(ov(organizationInfo=org_without(key)), "comodo-ev-ssl-certificate") == {
        f"organizationInfo.{key}": [f"{key} is required"]
    }


def test_organization_empty_phone_reports_only_phone() -> None:
    # the live service loses the whole block here (SPEC 3.4); we name the one empty key
    org = {**SDK_ORGANIZATION, "organizationMobile": ""}
    assert errors_of(ov(organizationInfo=org), "sectigo-ov") == {
        "organizationInfo.organizationMobile": ["organizationMobile is required"]
    }


@pytest.mark.parametrize(
    ("organization", "field", "message"),
    [
        (
            {**SDK_ORGANIZATION, "organizationCountry": "ZZ"},
            "organizationInfo.organizationCountry",
            "organizationCountry ZZ is not an ISO 3166-1 alpha-2 country code",
        ),
        (
            {**SDK_ORGANIZATION, "organizationCountry": "CHN"},
            "organizationInfo.organizationCountry",
            "organizationCountry CHN is not an ISO 3166-1 alpha-2 country code",
        ),
        (
            {**SDK_ORGANIZATION, "idType": "PASSPORT"},
            "organizationInfo.idType",
            "idType PASSPORT is not supported; use TYDMZ or OTHERS",
        ),
        (
            [SDK_ORGANIZATION],
            "organizationInfo",
            "organizationInfo must be a JSON object, got an array",
        ),
        (
            "{‘organizationName’: ‘x’}",
            "organizationInfo",
            "organizationInfo must be a JSON object; the string is not valid JSON "
            "(Expecting property name enclosed in double quotes at line 1 column 2)",
        ),
    ],
)
def test_organization_rejected(organization: object, field: str, message: str) -> None:
    assert errors_of(ov(organizationInfo=organization), "sectigo-ov") == {field: [message]}


def test_organization_normalised() -> None:
    org = {
        **SDK_ORGANIZATION,
        "organizationCountry": "cn",
        "idType": "tydmz",
        "organizationPostCode": 401320,
        "organizationState": "上海",
        "organizationRegNumber": "91310000MA1FL0000X",
    }
    result = parse_order_params(ov(organizationInfo=json.dumps(org)), product("sectigo-ov"))
    assert result.organization is not None
    assert result.organization.organization_country == "CN"
    assert result.organization.id_type == "TYDMZ"
    assert result.organization.organization_post_code == "401320"
    assert result.organization.organization_reg_number == "91310000MA1FL0000X"


# --- contacts (OV/EV) ------------------------------------------------------------------------


ROLE_FIELDS = ["organation", "address", "city", "state", "postCode", "country"]


@pytest.mark.parametrize(
    ("key", "role"), [("Administrator", "administrator"), ("tech", "tech"), ("finance", "finance")]
)
@pytest.mark.parametrize("missing", ROLE_FIELDS)
def test_contact_field_required_per_role(key: str, role: str, missing: str) -> None:
    contact = {k: v for k, v in CONTACT.items() if k != missing}
    assert errors_of(ov(**{key: contact}), "sectigo-ov") == {
        key: [f"The {role}’s {missing} is required"]
    }


def test_missing_contacts_listed_per_field_and_role() -> None:
    errors = errors_of(
        ov(Administrator=None, tech={}, finance="", domainInfo=names("*.example.com")),
        "sectigo-ov-wildcard",
    )
    assert errors == {
        "Administrator": [f"The administrator’s {f} is required" for f in ROLE_FIELDS],
        "tech": [f"The tech’s {f} is required" for f in ROLE_FIELDS],
        "finance": [f"The finance’s {f} is required" for f in ROLE_FIELDS],
    }


def test_contact_organization_spelling_hint() -> None:
    contact = {k: v for k, v in CONTACT.items() if k != "organation"}
    contact["organization"] = "上海锐成"
    assert errors_of(ov(finance=contact), "sectigo-ov") == {
        "finance": [
            "The finance’s organation is required (the API spells this key ‘organation’; "
            "‘organization’ is ignored)"
        ]
    }


def test_contact_country_invalid_and_normalised() -> None:
    assert errors_of(ov(tech={**CONTACT, "country": "UK"}), "sectigo-ov") == {
        "tech": ["The tech’s country UK is not an ISO 3166-1 alpha-2 country code"]
    }
    result = parse_order_params(ov(tech={**CONTACT, "country": "gb"}), product("sectigo-ov"))
    assert result.tech is not None and result.tech.country == "GB"


def test_contact_not_an_object() -> None:
    assert errors_of(ov(Administrator=["x"]), "sectigo-ov") == {
        "Administrator": ["Administrator must be a JSON object, got an array"]
    }


def test_contact_as_json_string_and_lower_case_key() -> None:
    params = ov(Administrator=None, administrator=json.dumps(CONTACT, ensure_ascii=False))
    result = parse_order_params(params, product("sectigo-ov"))
    assert result.administrator is not None and result.administrator.city == "上海"


def test_dv_contacts_optional_but_country_checked() -> None:
    result = parse_order_params(dv(Administrator={"email": "a@example.com"}), product("comodo-ssl"))
    assert result.administrator == Contact(email="a@example.com")
    assert errors_of(dv(Administrator={"email": "a@example.com", "country": "XX"})) == {
        "Administrator": [
            "The administrator’s country XX is not an ISO 3166-1 alpha-2 country code"
        ]
    }
    assert errors_of(dv(organizationInfo={"organizationCountry": "XX"})) == {
        "organizationInfo.organizationCountry": [
            "organizationCountry XX is not an ISO 3166-1 alpha-2 country code"
        ]
    }


# --- replace ---------------------------------------------------------------------------------


def test_replace_ov_without_organization() -> None:
    result = parse_order_params(
        {"csr": CSR, "domainInfo": names("www.example.com")}, product("sectigo-ov"), replace=True
    )
    assert (result.organization, result.administrator, result.server) == (None, None, None)


def test_replace_ov_partial_organization_rejected() -> None:
    params = {
        "csr": CSR,
        "domainInfo": names("www.example.com"),
        "organizationInfo": org_without("organizationCity"),
    }
    assert errors_of(params, "sectigo-ov", replace=True) == {
        "organizationInfo.organizationCity": ["organizationCity is required"]
    }
