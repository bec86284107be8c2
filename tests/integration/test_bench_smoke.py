"""The benchmarks in smoke mode (tiny sizes, every section, both CAs, the upstream ACME section),
so bench/ cannot rot.

Speed is never asserted here (bench/ measures it); this checks that every section ran without
an error and reported numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Targets of issue 6" in run.stdout  # the tables were printed
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_meta_names_the_machine_and_command(report: dict[str, Any]) -> None:
    meta = report["meta"]
    assert meta["command"].endswith("-m bench.run --smoke --out " + meta["settings"]["out"])
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["cpu_model"]
    assert _number(meta["duration_s"])


def test_end_to_end_ran_on_both_cas_without_errors(report: dict[str, Any]) -> None:
    rows = report["e2e"]
    assert {r["system"] for r in rows} == {"certbroker", "pebble"}
    for row in rows:
        assert row["errors"] == 0, row["error_samples"]
        assert row["orders"] > 0
        for key in (
            "certs_per_s",
            "p50_ms",
            "p99_ms",
            "server_cpu_ms_per_cert",
            "server_peak_rss_mb",
            "client_cpu_ms_per_cert",
        ):
            assert _number(row[key]) and row[key] > 0, (key, row)
    ratios = report["e2e_ratios"]
    assert ratios and all(
        _number(r["certs_per_s"]) and _number(r["certbroker_cpu_to_floor"]) for r in ratios
    )


def test_place_and_collect_alone(report: dict[str, Any]) -> None:
    section = report["place_collect"]
    kinds = {r["what"] for r in section["rows"]}
    assert kinds == {
        "place with CSR",
        "place without CSR",
        "place without CSR, half capacity",
        "collect COMPLETE",
        "collect PENDING",
    }
    for row in section["rows"]:
        assert row["errors"] == 0, row["error_samples"]
        assert row["requests_per_s"] > 0 and _number(row["p99_ms"])
        assert _number(row["server_cpu_ms_per_request"])
    assert section["keygen_capacity_per_s"] > 0
    assert section["seed_orders"] > 0


def test_validation_engine_checked_every_name(report: dict[str, Any]) -> None:
    engine = report["validation_engine"]
    assert engine["finished"] and engine["checks"] >= engine["names"] > 0
    assert engine["checks_per_s"] > 0 and engine["peak_rss_mb"] > 0


def test_upstream_acme_ran_through_certbroker_and_directly(report: dict[str, Any]) -> None:
    section = report["upstream"]
    rows = {r["system"]: r for r in section["rows"]}
    assert set(rows) == {"certbroker + Pebble", "ACME client -> Pebble"}
    for row in rows.values():
        assert row["errors"] == 0, row["error_samples"]
        assert row["orders"] == report["meta"]["settings"]["upstream_n"] > 0
        for key in ("certs_per_s", "p50_ms", "p99_ms", "pebble_cpu_ms_per_cert"):
            assert _number(row[key]) and row[key] > 0, (key, row)
        # Every certificate took at least newOrder, finalize and the download upstream.
        for kind in ("POST /order-plz", "POST /finalize-order", "POST /certZ"):
            assert row["upstream_calls"][kind] == row["orders"], row["upstream_calls"]
    assert rows["certbroker + Pebble"]["certbroker_cpu_ms_per_cert"] > 0
    assert all(v is None or _number(v) for v in section["overhead"].values())


def test_crypto_floor_and_targets(report: dict[str, Any]) -> None:
    floor = report["crypto_floor"]
    for op in (
        "csr_parse_verify_ec256",
        "leaf_sign_builtin_issuer",
        "keygen_rsa2048",
        "keygen_ec256",
    ):
        assert floor["operations_ms"][op] > 0
    assert "secp384r1" in floor["issuer"] or "RSA" in floor["issuer"]
    assert floor["floor_ms_per_certificate"]["ec256"] > 0
    for leaf in ("ec256", "rsa2048"):
        for mode in ("off", "on"):
            assert floor["operations_ms"][f"builtin_ca_sign_{leaf}_leaf_lint_{mode}"] > 0
        assert isinstance(floor["pre_issuance_lint_ms"][leaf], float)
    goals = {t["target"] for t in report["targets"]}
    assert any(goal.startswith("collect COMPLETE") for goal in goals)
    assert any("re-checked within 60 s" in goal for goal in goals)
    assert all(t["met"] in (True, False) for t in report["targets"])


def _bench(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_handlers_bench_prints_cpu_per_call() -> None:
    lines = _bench("bench.handlers", "--n", "10").strip().splitlines()
    assert [line.rsplit(" ", 3)[0].strip() for line in lines] == [
        "handler  place (with CSR)",
        "handler  collect (PENDING)",
        "ASGI app place (with CSR)",
        "ASGI app collect (PENDING)",
    ]
    for line in lines:
        assert float(line.split()[-3]) > 0, line  # "... 4.636 ms CPU"


def test_separate_worker_bench_runs_both_layouts_without_errors() -> None:
    out = _bench("bench.separate_worker", "--n", "8", "--concurrency", "2")
    lines = out.strip().splitlines()
    assert [line.split(" C=")[0].strip() for line in lines] == [
        "serve (worker in-process)",
        "serve + worker process",
    ]
    assert all(line.endswith("errors 0") for line in lines), out
