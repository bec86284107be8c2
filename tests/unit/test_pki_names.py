from __future__ import annotations

import pytest

from certbroker.pki.names import (
    NameSyntaxError,
    base_domain_of_wildcard,
    classify_name,
    normalize_name,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", "example.com"),
        ("  WWW.Example.COM.  ", "www.example.com"),
        ("*.Example.com", "*.example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("*.BÜCHER.example", "*.xn--bcher-kva.example"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        # IDNA 2008 A-labels given as such are kept
        ("xn--zca.xn--strae-oqa.de", "xn--zca.xn--strae-oqa.de"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        # UTS 46 maps the ideographic and full-width full stops to "."
        ("例え。テスト", "xn--r8jz45g.xn--zckzah"),
        # IDNA 2008 (non-transitional UTS 46) keeps the sharp s, where IDNA 2003 gave "ss"
        ("straße.de", "xn--strae-oqa.de"),
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("1.2.3.4", "1.2.3.4"),
        (" 2001:DB8:0:0::1 ", "2001:db8::1"),
        ("0.0.0.0", "0.0.0.0"),  # noqa: S104 - a name, nothing binds to it
        ("a1.123.com", "a1.123.com"),
        ("x" * 63 + ".com", "x" * 63 + ".com"),
    ],
)
def test_normalize_name_valid(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "name is empty"),
        ("   ", "name is empty"),
        (".", "is not a domain name"),
        ("com", "not a fully qualified domain name"),
        ("localhost.", "not a fully qualified domain name"),
        ("a..com", "has an empty label"),
        (".a.com", "has an empty label"),
        ("a.com..", "has an empty label"),
        ("-a.com", "starts or ends with a hyphen"),
        ("a-.com", "starts or ends with a hyphen"),
        ("a_b.example.com", "contains ‘_’"),
        ("a b.example.com", "contains ‘ ’"),
        ("a/b.example.com", "contains ‘/’"),
        ("x" * 64 + ".com", "is 64 characters; at most 63"),
        ("*.com", "at least two labels after ‘*.’"),
        ("*", "at least two labels after ‘*.’"),
        ("*.*.example.com", "contains ‘*’"),
        ("a.*.example.com", "only allowed as the whole leftmost label"),
        ("w*.example.com", "only allowed as the whole leftmost label"),
        ("example.123", "top-level label ‘123’ is all-numeric"),
        ("1.2.3", "all-numeric"),
        ("01.2.3.4", "all-numeric"),
        ("256.1.1.1", "all-numeric"),
        ("fe80::1%eth0", "zone id"),
        ("xn--a.com", "not a valid IDNA 2008 A-label"),
        ("ab--cd.example.com", "reserved for IDNA"),
        ("[::1]", "not a fully qualified domain name"),
        ("a[1].example.com", "contains ‘[’"),
        ("xn--zckzah-.com", "starts or ends with a hyphen"),
        ("xn--4gqq.com", "not a valid IDNA 2008 A-label"),
        ("xn--abc-.com", "starts or ends with a hyphen"),
        ("xn--abc.com", "not a valid IDNA 2008 A-label"),
        ("\u00ad.example.com", "is not a valid IDNA 2008 name"),
    ],
)
def test_normalize_name_invalid(raw: str, fragment: str) -> None:
    with pytest.raises(NameSyntaxError) as err:
        normalize_name(raw)
    assert fragment in str(err.value)


def test_total_length_limit() -> None:
    label = "a" * 63
    ok = ".".join([label, label, label, "a" * 57, "com"])  # 253 characters
    assert len(ok) == 253
    assert normalize_name(ok) == ok
    with pytest.raises(NameSyntaxError, match="is 254 characters; at most 253"):
        normalize_name("a" + ok)


def test_trailing_dot_stripped_only_once() -> None:
    assert normalize_name("example.com.") == "example.com"
    with pytest.raises(NameSyntaxError, match="empty label"):
        normalize_name("example.com..")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("example.com", "dns"),
        ("www.example.com", "dns"),
        ("*.example.com", "wildcard"),
        ("*.a.b.example.com", "wildcard"),
        ("192.0.2.1", "ip"),
        ("127.0.0.1", "ip"),  # syntax only: address policy lives elsewhere
        ("2001:db8::1", "ip"),
        ("::1", "ip"),
    ],
)
def test_classify_name(name: str, kind: str) -> None:
    assert classify_name(name) == kind


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("Example.com", "is not normalized"),
        ("example.com.", "has an empty label"),
        ("2001:DB8::1", "canonical form is ‘2001:db8::1’"),
        ("", "name is empty"),
        ("bücher.de", "contains ‘ü’"),
    ],
)
def test_classify_name_rejects_unnormalized(name: str, fragment: str) -> None:
    with pytest.raises(NameSyntaxError) as err:
        classify_name(name)
    assert fragment in str(err.value)


def test_name_syntax_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="is not a fully qualified domain name"):
        normalize_name("intranet")


def test_base_domain_of_wildcard() -> None:
    assert base_domain_of_wildcard("*.a.com") == "a.com"
    assert base_domain_of_wildcard("*.x.y.example") == "x.y.example"
    with pytest.raises(NameSyntaxError, match="is not a wildcard name"):
        base_domain_of_wildcard("a.com")
