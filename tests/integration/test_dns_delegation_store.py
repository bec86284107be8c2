"""Delegation labels and the TXT rows the built-in DNS server answers from."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.dns_delegation.instructions import delegation_for
from certbroker.dns_delegation.labels import make_label
from certbroker.orders import accounts
from certbroker.pki.secretbox import SecretBox, generate_master_key
from certbroker.store import dns_delegation as store
from certbroker.store.db import Database

NOW = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
ZONE = "dcv.operator.example"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'delegation.db'}")
    database.upgrade()
    return database


def test_label_is_stable_tenant_bound_and_a_dns_label(db: Database) -> None:
    box = SecretBox({"k1": generate_master_key()}, "k1")
    with db.transaction() as session:
        one = accounts.create_account(session, "one", sandbox=False, now=NOW).id
        two = accounts.create_account(session, "two", sandbox=False, now=NOW).id
        first = delegation_for(session, box, one, "Example.COM.", zone=ZONE, now=NOW)
        wildcard = delegation_for(session, box, one, "*.example.com", zone=ZONE, now=NOW)
        other = delegation_for(session, box, two, "example.com", zone=ZONE, now=NOW)
    assert re.fullmatch(r"[a-z2-7]{26}", first.label)
    assert wildcard == first  # one CNAME covers the name and its wildcard
    assert first.record == "_acme-challenge.example.com" and first.dns_host == "_acme-challenge"
    assert first.target == f"{first.label}.{ZONE}."
    assert other.label != first.label
    # A rotated master key derives another secret, but the stored label stays.
    rotated = SecretBox({"k1": generate_master_key()}, "k1")
    with db.transaction() as session:
        again = delegation_for(session, rotated, one, "example.com", zone=ZONE, now=NOW)
    assert again.label == first.label


def test_make_label_is_hmac_of_account_and_base() -> None:
    assert make_label(b"s", 1, "example.com") == make_label(b"s", 1, "example.com")
    assert make_label(b"s", 1, "example.com") != make_label(b"t", 1, "example.com")
    assert make_label(b"s", 1, "example.com") != make_label(b"s", 11, "example.com")


def test_txt_rows_replace_expire_and_mark_empty_non_terminals(db: Database) -> None:
    name = f"abc.{ZONE}"
    with db.transaction() as session:
        store.replace_txt(session, name, ["v1", "v2"], now=NOW, expires_at=NOW + timedelta(hours=1))
        store.replace_txt(session, f"x.deep.{ZONE}", ["d"], now=NOW, expires_at=NOW)
    with db.read() as session:
        assert store.txt_values(session, "ABC.dcv.operator.example.", now=NOW) == ["v1", "v2"]
        assert store.txt_values(session, f"x.deep.{ZONE}", now=NOW) == []  # expired
        assert store.has_names_below(session, ZONE, now=NOW)
        assert not store.has_names_below(session, f"deep.{ZONE}", now=NOW)
    with db.transaction() as session:
        store.replace_txt(session, name, ["v3"], now=NOW, expires_at=NOW + timedelta(hours=1))
    with db.read() as session:
        assert store.txt_values(session, name, now=NOW) == ["v3"]
    with db.transaction() as session:
        store.remove_txt(session, name)
    with db.read() as session:
        assert store.txt_values(session, name, now=NOW) == []
