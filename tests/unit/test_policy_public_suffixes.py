"""Registrable domains from the bundled Public Suffix List, and the approver rule built on it."""

from __future__ import annotations

import pytest

from certbroker.orders import approvers
from certbroker.orders.errors import ApiError
from certbroker.policy.public_suffixes import (
    is_public_suffix,
    parents_to_registrable,
    registrable_domain,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("www.shop.example.com", "example.com"),
        ("example.com", "example.com"),
        ("Shop.Example.CO.UK.", "example.co.uk"),
        ("*.a.example.co.uk", "example.co.uk"),
        ("x.city.kawasaki.jp", "city.kawasaki.jp"),  # exception rule !city.kawasaki.jp
        ("a.b.kawasaki.jp", "a.b.kawasaki.jp"),  # wildcard rule *.kawasaki.jp
        ("user.github.io", "user.github.io"),  # private section counts too
        ("shop.example.test", "example.test"),  # unknown TLD: default rule "*"
        ("co.uk", None),
        ("com", None),
        ("github.io", None),
        ("*.co.uk", None),
        ("192.0.2.1", None),
        ("2001:db8::1", None),
        ("", None),
    ],
)
def test_registrable_domain(name: str, expected: str | None) -> None:
    assert registrable_domain(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("co.uk", True),
        ("com", True),
        ("github.io", True),
        ("foo.kawasaki.jp", True),
        ("city.kawasaki.jp", False),
        ("example.co.uk", False),
        ("www.example.com", False),
        ("192.0.2.1", False),
    ],
)
def test_is_public_suffix(name: str, expected: bool) -> None:
    assert is_public_suffix(name) is expected


def test_parents_stop_at_the_registrable_domain() -> None:
    assert parents_to_registrable("a.shop.example.co.uk") == [
        "a.shop.example.co.uk",
        "shop.example.co.uk",
        "example.co.uk",
    ]
    assert parents_to_registrable("*.Shop.Example.com") == ["shop.example.com", "example.com"]
    assert parents_to_registrable("co.uk") == []
    assert parents_to_registrable("10.0.0.1") == []


def test_approver_domains_follow_the_psl() -> None:
    assert approvers.approver_domains("www.example.co.uk") == ["www.example.co.uk", "example.co.uk"]
    emails = approvers.approver_emails("shop.example.co.uk")
    assert "admin@example.co.uk" in emails
    assert not any(e.endswith("@co.uk") for e in emails)
    assert approvers.approver_addresses("user.github.io") == [
        f"{local}@user.github.io" for local in approvers.LOCAL_PARTS
    ]


def test_public_suffix_has_no_approver() -> None:
    with pytest.raises(ApiError) as caught:
        approvers.approver_emails("co.uk")
    assert caught.value.errors == {
        "domainName": [
            "co.uk is a public suffix, shared by independent registrants; it cannot be certified "
            "(BR 3.2.2.6)"
        ]
    }
    assert approvers.approver_addresses("co.uk") == []
