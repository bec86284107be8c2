"""The tables of a bench report, once: the terminal (bench/run.py) and the Markdown for
docs/PERFORMANCE.md (bench/markdown.py) render the same sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Section:
    title: str
    header: list[str]
    rows: list[list[object]]


def _met(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def sections(report: dict[str, Any]) -> list[Section]:
    out: list[Section] = []
    if report.get("e2e"):
        out.append(
            Section(
                "End to end: orders to certificates",
                [
                    "system",
                    "key",
                    "C",
                    "orders",
                    "errors",
                    "certs/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "server CPU ms/cert",
                    "server peak RSS MB",
                    "client CPU ms/cert",
                ],
                [
                    [
                        r["system"],
                        r["key_type"],
                        r["concurrency"],
                        r["orders"],
                        r["errors"],
                        r["certs_per_s"],
                        r["p50_ms"],
                        r["p95_ms"],
                        r["p99_ms"],
                        r["server_cpu_ms_per_cert"],
                        r["server_peak_rss_mb"],
                        r["client_cpu_ms_per_cert"],
                    ]
                    for r in report["e2e"]
                ],
            )
        )
        out.append(
            Section(
                "certbroker / Pebble (and server CPU / crypto floor)",
                [
                    "key",
                    "C",
                    "certs/s cb/pebble",
                    "p50 cb/pebble",
                    "p99 cb/pebble",
                    "CPU/cert cb/pebble",
                    "RSS cb/pebble",
                    "cb CPU / floor",
                    "pebble CPU / floor",
                ],
                [
                    [
                        r["key_type"],
                        r["concurrency"],
                        r.get("certs_per_s"),
                        r.get("p50"),
                        r.get("p99"),
                        r.get("server_cpu_per_cert"),
                        r.get("server_peak_rss"),
                        r.get("certbroker_cpu_to_floor"),
                        r.get("pebble_cpu_to_floor"),
                    ]
                    for r in report.get("e2e_ratios", [])
                ],
            )
        )
    pc = report.get("place_collect")
    if pc:
        out.append(
            Section(
                f"place and collect alone (key-generation capacity {pc['keygen_capacity_per_s']} "
                f"req/s, server peak RSS {pc['server_peak_rss_mb']} MB)",
                [
                    "request",
                    "C",
                    "requests",
                    "errors",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "server CPU ms/req",
                    "client CPU ms/req",
                ],
                [
                    [
                        r["what"],
                        r["concurrency"],
                        r["requests"],
                        r["errors"],
                        r["requests_per_s"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r["server_cpu_ms_per_request"],
                        r["client_cpu_ms_per_request"],
                    ]
                    for r in pc["rows"]
                ],
            )
        )
    ve = report.get("validation_engine")
    if ve:
        out.append(
            Section(
                "Validation engine: a backlog of pending names re-checked",
                [
                    "names",
                    "orders",
                    "checks",
                    "finished",
                    "seconds",
                    "checks/s",
                    "CPU ms/check",
                    "peak RSS MB",
                ],
                [
                    [
                        ve["names"],
                        ve["orders"],
                        ve["checks"],
                        _met(ve.get("finished")),
                        ve["seconds"],
                        ve["checks_per_s"],
                        ve["cpu_ms_per_check"],
                        ve["peak_rss_mb"],
                    ]
                ],
            )
        )
    fl = report.get("crypto_floor")
    if fl:
        rows: list[list[object]] = [[k, v] for k, v in fl["operations_ms"].items()]
        rows += [
            [f"floor per certificate ({k} order)", v]
            for k, v in fl["floor_ms_per_certificate"].items()
        ]
        rows += [
            [f"pre-issuance lint per certificate ({k} leaf)", v]
            for k, v in fl.get("pre_issuance_lint_ms", {}).items()
        ]
        out.append(
            Section(
                f"Crypto floor (cryptography, CPU ms; built-in issuer: {fl['issuer']})",
                ["operation (cryptography)", "CPU ms"],
                rows,
            )
        )
    up = report.get("upstream")
    if up:
        out.append(
            Section(
                "Upstream ACME: certbroker with Pebble as upstream, and Pebble driven directly",
                [
                    "system",
                    "key",
                    "C",
                    "orders",
                    "errors",
                    "certs/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "certbroker CPU ms/cert",
                    "Pebble CPU ms/cert",
                    "client CPU ms/cert",
                    "upstream calls/cert",
                ],
                [
                    [
                        r["system"],
                        r["key_type"],
                        r["concurrency"],
                        r["orders"],
                        r["errors"],
                        r["certs_per_s"],
                        r["p50_ms"],
                        r["p95_ms"],
                        r["p99_ms"],
                        r["certbroker_cpu_ms_per_cert"],
                        r["pebble_cpu_ms_per_cert"],
                        r["client_cpu_ms_per_cert"],
                        r["upstream_calls_per_cert"],
                    ]
                    for r in up["rows"]
                ],
            )
        )
        calls = sorted({k for r in up["rows"] for k in r["upstream_calls"]})
        out.append(
            Section(
                "Upstream ACME: calls to Pebble per certificate, by kind",
                ["call", *(r["system"] for r in up["rows"])],
                [
                    [
                        kind,
                        *(
                            round(r["upstream_calls"].get(kind, 0) / max(1, r["orders"]), 2)
                            for r in up["rows"]
                        ),
                    ]
                    for kind in calls
                ],
            )
        )
        ov = up["overhead"]
        out.append(
            Section(
                "Upstream ACME: certbroker + Pebble / Pebble directly",
                [
                    "certs/s",
                    "p50",
                    "p99",
                    "p50 added ms",
                    "calls/cert",
                    "Pebble CPU/cert",
                    "certbroker CPU / client CPU",
                ],
                [
                    [
                        ov["certs_per_s"],
                        ov["p50"],
                        ov["p99"],
                        ov["p50_added_ms"],
                        ov["upstream_calls_per_cert"],
                        ov["pebble_cpu_per_cert"],
                        ov["certbroker_cpu_to_client_cpu"],
                    ]
                ],
            )
        )
    if report.get("targets"):
        out.append(
            Section(
                "Targets of issue 6",
                ["target", "measured", "met"],
                [[t["target"], t["measured"], _met(t["met"])] for t in report["targets"]],
            )
        )
    return out
