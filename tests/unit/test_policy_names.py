"""The name policy's operator inputs: the blocklist and a Public Suffix List file of one's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certbroker.policy import public_suffixes
from certbroker.policy.names import NamePolicy, parse_blocklist, refusal

LIST = """// ===BEGIN ICANN DOMAINS===
com
newtld
co.newtld
// ===END ICANN DOMAINS===
// ===BEGIN PRIVATE DOMAINS===
pages.newtld
// ===END PRIVATE DOMAINS===
"""


@pytest.fixture
def own_list(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "public_suffix_list.dat"
    path.write_text(LIST)
    public_suffixes.use_list_file(path)
    try:
        yield path
    finally:
        public_suffixes.use_list_file(None)


def test_a_newer_list_file_takes_effect_without_a_release(own_list: Path) -> None:
    assert public_suffixes.list_file() == own_list
    assert refusal("shop.newtld") is None  # a TLD the bundled list does not know
    problem = refusal("co.newtld")
    assert problem is not None and problem.rule == "public-suffix"
    wildcard = refusal("*.pages.newtld")
    assert wildcard is not None and wildcard.rule == "wildcard-suffix"
    problem = refusal("shop.co.uk")  # not in this list: its TLD is unknown now
    assert problem is not None and problem.rule == "internal-name"


def test_the_bundled_list_is_back_after_none() -> None:
    public_suffixes.use_list_file(None)
    problem = refusal("shop.newtld")
    assert problem is not None and problem.rule == "internal-name"
    assert refusal("shop.co.uk") is None


def test_a_file_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "list.dat"
    bad.write_text("<html>not found</html>")
    with pytest.raises(ValueError, match="not a Public Suffix List"):
        public_suffixes.use_list_file(bad)
    assert public_suffixes.list_file() != bad  # the list in use stays
    assert refusal("shop.co.uk") is None


def test_blocklist_entries_are_canonical_and_cover_subdomains() -> None:
    blocked = parse_blocklist(["Bank.COM.", " *.bücher.example ", ""])
    assert blocked == ("bank.com", "xn--bcher-kva.example")
    policy = NamePolicy(blocked=blocked)
    for name in ("bank.com", "login.bank.com", "*.bank.com"):
        problem = refusal(name, policy)
        assert problem is not None and problem.rule == "blocked", name
    assert refusal("notbank.com", policy) is None
    with pytest.raises(ValueError, match=r"blocklist entry 'a_b\.com'"):
        parse_blocklist(["a_b.com"])
