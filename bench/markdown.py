"""Markdown tables of a bench result, for docs/PERFORMANCE.md.

python -m bench.markdown bench/results/bench-....json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "**no**"
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    out: list[str] = []
    meta = report["meta"]
    m = meta["machine"]
    out.append(
        f"`{meta['command']}` — {meta['started']}, {meta.get('duration_s')} s; "
        f"{m['nproc']} × {m['cpu_model']}, Python {m['python']}, cryptography "
        f"{m['cryptography']} ({m['openssl']}), pebble {m['pebble']}; load average "
        f"{m.get('load_average_at_start')} → {m.get('load_average_at_end')}"
    )
    if report.get("e2e"):
        out.append(
            md_table(
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
            md_table(
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
            f"Key-generation capacity (place without CSR, best C): "
            f"{pc['keygen_capacity_per_s']} req/s; server peak RSS {pc['server_peak_rss_mb']} MB."
        )
        out.append(
            md_table(
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
            md_table(
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
                        ve.get("finished"),
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
        out.append(f"Built-in issuer: {fl['issuer']}.")
        out.append(md_table(["operation (cryptography)", "CPU ms"], rows))
    if report.get("targets"):
        out.append(
            md_table(
                ["target", "measured", "met"],
                [[t["target"], t["measured"], t["met"]] for t in report["targets"]],
            )
        )
    prof = report.get("profile")
    if prof:
        run = prof["run"]
        out.append(
            f"Profile run ({run['key_type']}, C={run['concurrency']}, py-spy attached): "
            f"{run['certs_per_s']} certs/s, {run['server_cpu_ms_per_cert']} ms CPU/cert."
        )
        out.append(
            md_table(
                ["% of busy samples (inclusive)", "frame"],
                [[share, f"`{frame}`"] for frame, share in prof["summary"]["inclusive"]],
            )
        )
    return "\n\n".join(out) + "\n"


def main() -> None:
    print(render(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
