"""Markdown tables of a bench result, for docs/PERFORMANCE.md.

python -m bench.markdown bench/results/bench-....json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.sections import sections


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
    for section in sections(report):
        out.append(f"**{section.title}**")
        out.append(md_table(section.header, section.rows))
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
