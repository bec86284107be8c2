"""Without PostgreSQL the PostgreSQL tests say why they did not run; under CI they fail."""

from __future__ import annotations

import pytest

from tests.helpers import postgres


@pytest.fixture
def no_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "_bin_dir", lambda: None)


def test_missing_binaries_are_named(no_postgres: None) -> None:
    reason = postgres.missing_reason()
    assert reason is not None and "initdb" in reason and "scripts/setup test" in reason


def test_skipped_with_the_reason_outside_ci(
    no_postgres: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"PostgreSQL tests not run: .*initdb"):
        postgres.require_postgres()


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_a_failure_under_ci(no_postgres: None, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        postgres.require_postgres()


def test_nothing_happens_when_postgres_is_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "missing_reason", lambda: None)
    monkeypatch.setenv("CI", "true")
    postgres.require_postgres()  # neither skips nor fails
