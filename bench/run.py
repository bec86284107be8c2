"""Run the benchmarks of issue 6 in one go, print tables and write JSON.

    .venv/bin/python -m bench.run                  # the default run (a few minutes, 2 cores)
    .venv/bin/python -m bench.run --smoke          # tiny N, every section, both CAs (CI)
    .venv/bin/python -m bench.run --sections e2e --key-types ec256 --concurrency 16 --n 300

Sections: e2e (certbroker and Pebble, orders to certificates), place_collect, validation
(the DCV engine on a backlog), floor (the cryptography of one certificate), upstream
(certbroker issuing through Pebble as its upstream ACME CA, against Pebble driven directly).
Speeds are reported, never asserted; `targets` in the JSON says which goals of issue 6 were met.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    certbroker_e2e,
    crypto_floor,
    pebble_e2e,
    place_collect,
    upstream_e2e,
    validation_engine,
)
from bench.common import (
    KEY_TYPES,
    REPO,
    ChallTestSrv,
    DcvSite,
    latency_ms,
    load_average,
    machine,
    prepare_csrs,
    ratio,
    table,
)
from bench.load import LoadResult
from bench.profiling import summarize
from bench.sections import sections

SECTIONS = ("e2e", "place_collect", "validation", "floor", "upstream")
RESULTS = REPO / "bench" / "results"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _words(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, every section (CI)")
    p.add_argument("--sections", type=_words, default=list(SECTIONS), help="comma-separated")
    p.add_argument(
        "--systems", type=_words, default=["certbroker", "pebble"], help="certbroker,pebble"
    )
    p.add_argument("--n", type=int, default=500, help="orders per end-to-end run")
    p.add_argument("--n-serial", type=int, default=100, help="orders when C = 1 (latency-bound)")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="end-to-end clients")
    p.add_argument("--key-types", type=_words, default=list(KEY_TYPES), help="ec256,rsa2048")
    p.add_argument("--processes", type=int, default=4, help="client processes (at most C)")
    p.add_argument("--poll-ms", type=float, default=50.0, help="first wait before a poll")
    p.add_argument("--poll-max-ms", type=float, default=500.0, help="longest wait between polls")
    p.add_argument("--worker-poll", type=float, default=0.1, help="CERTBROKER_WORKER_POLL_SECONDS")
    p.add_argument("--place-concurrency", type=_ints, default=[1, 16, 64], help="place/collect")
    p.add_argument("--requests", type=int, default=400, help="requests per place/collect run")
    p.add_argument("--requests-without-csr", type=int, default=80)
    p.add_argument("--seed-orders", type=int, default=200, help="COMPLETE orders for collect")
    p.add_argument("--names", type=int, default=10_000, help="pending names for the engine")
    p.add_argument("--names-per-order", type=int, default=25)
    p.add_argument("--names-limit-s", type=float, default=180.0, help="stop the engine after")
    p.add_argument("--upstream-n", type=int, default=200, help="orders per upstream run")
    p.add_argument("--upstream-concurrency", type=int, default=16, help="upstream clients")
    p.add_argument("--floor-seconds", type=float, default=0.5, help="CPU time per floor op")
    p.add_argument("--proposed", action="store_true", help="servers with bench/proposed.py")
    p.add_argument("--profile", action="store_true", help="py-spy an extra certbroker run")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    args = p.parse_args(argv)
    if args.smoke:
        # Every section and both CAs, each as small as still gives numbers.
        args.n, args.n_serial, args.concurrency = 4, 4, [2]
        args.key_types, args.processes = args.key_types[:1], 2
        args.place_concurrency, args.requests, args.requests_without_csr = [2], 6, 2
        args.seed_orders, args.names, args.names_per_order = 2, 40, 20
        args.floor_seconds = 0.02
        args.upstream_n, args.upstream_concurrency = 3, 2
    for given, known, what in (
        (args.sections, SECTIONS, "sections"),
        (args.systems, ("certbroker", "pebble"), "systems"),
        (args.key_types, KEY_TYPES, "key types"),
    ):
        unknown = set(given) - set(known)
        if unknown or not given:
            p.error(f"unknown or no {what} {sorted(unknown)}; choose from {', '.join(known)}")
    return args


def e2e_row(system: str, key: str, c: int, result: LoadResult, rss: float) -> dict[str, Any]:
    ok = max(1, result.ok)
    helpers = {k: v for k, v in result.server_cpu_seconds.items() if k != "server"}
    return {
        "system": system,
        "key_type": key,
        "concurrency": c,
        "orders": result.ok + len(result.errors),
        "errors": len(result.errors),
        "error_samples": result.errors[:3],
        "certs_per_s": round(result.per_second, 2),
        **latency_ms(result.latencies),
        "server_cpu_ms_per_cert": round(1000 * result.server_cpu_seconds["server"] / ok, 3),
        "server_peak_rss_mb": round(rss, 1),
        "client_cpu_ms_per_cert": round(1000 * result.client_cpu_seconds / ok, 3),
        "client_processes": result.processes,
        "helper_cpu_ms_per_cert": {k: round(1000 * v / ok, 3) for k, v in helpers.items()},
        "wall_s": round(result.wall_seconds, 2),
    }


def run_e2e(
    args: argparse.Namespace, work: Path, chall: ChallTestSrv, site: DcvSite
) -> list[dict[str, Any]]:
    rows = []
    poll, poll_max = args.poll_ms / 1000, args.poll_max_ms / 1000
    for key in args.key_types:
        for c in args.concurrency:
            n = args.n_serial if c == 1 else args.n
            for system in args.systems:
                tag = f"{system[:2]}-{key}-c{c}"
                names = [f"{tag}-{i}.shop.example.com" for i in range(n)]
                csrs = prepare_csrs(key, names)
                if system == "certbroker":
                    items = certbroker_e2e.order_items(names, csrs)
                    result, rss = certbroker_e2e.run(
                        work / tag,
                        chall=chall,
                        site=site,
                        items=items,
                        concurrency=c,
                        processes=args.processes,
                        poll_seconds=poll,
                        poll_max_seconds=poll_max,
                        worker_poll_seconds=args.worker_poll,
                        proposed=args.proposed,
                    )
                else:
                    acme_items = [
                        pebble_e2e.AcmeItem(nm, csr) for nm, csr in zip(names, csrs, strict=True)
                    ]
                    result, rss = pebble_e2e.run(
                        work / tag,
                        chall=chall,
                        items=acme_items,
                        concurrency=c,
                        processes=args.processes,
                        poll_seconds=poll,
                        poll_max_seconds=poll_max,
                    )
                row = e2e_row(system, key, c, result, rss)
                rows.append(row)
                print(
                    f"  e2e {system:10} {key:7} C={c:<3} {row['certs_per_s']:8.2f} certs/s  "
                    f"p99 {row['p99_ms']:8.1f} ms  server {row['server_cpu_ms_per_cert']:7.2f} "
                    f"ms/cert  errors {row['errors']}",
                    flush=True,
                )
    return rows


def run_profile(
    args: argparse.Namespace, work: Path, chall: ChallTestSrv, site: DcvSite
) -> dict[str, Any]:
    key, c = args.key_types[0], max(args.concurrency)
    names = [f"prof-{i}.shop.example.com" for i in range(args.n)]
    items = certbroker_e2e.order_items(names, prepare_csrs(key, names))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"profile-{datetime.datetime.now():%Y%m%d-%H%M%S}.txt"
    result, rss = certbroker_e2e.run(
        work / "profiled",
        chall=chall,
        site=site,
        items=items,
        concurrency=c,
        processes=args.processes,
        poll_seconds=args.poll_ms / 1000,
        poll_max_seconds=args.poll_max_ms / 1000,
        worker_poll_seconds=args.worker_poll,
        proposed=args.proposed,
        profile_path=path,
    )
    return {
        "path": str(path),
        "run": e2e_row("certbroker (py-spy attached)", key, c, result, rss),
        "summary": summarize(path, top=25),
    }


def run_upstream_profile(
    args: argparse.Namespace, work: Path, chall: ChallTestSrv, site: DcvSite
) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"profile-upstream-{datetime.datetime.now():%Y%m%d-%H%M%S}.txt"
    row = upstream_e2e.run_certbroker(
        work / "upstream-profiled",
        chall=chall,
        site=site,
        items=upstream_e2e.items(args.upstream_n, args.key_types[0], "up-prof"),
        concurrency=args.upstream_concurrency,
        processes=args.processes,
        poll_seconds=args.poll_ms / 1000,
        poll_max_seconds=args.poll_max_ms / 1000,
        worker_poll_seconds=args.worker_poll,
        profile_path=path,
    )
    row["system"] += " (py-spy attached)"
    return {"path": str(path), "run": row, "summary": summarize(path, top=25)}


def e2e_ratios(rows: list[dict[str, Any]], floor: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    by_key = {(r["system"], r["key_type"], r["concurrency"]): r for r in rows}
    for (system, key, c), cb in by_key.items():
        if system != "certbroker":
            continue
        pb = by_key.get(("pebble", key, c))
        entry: dict[str, Any] = {"key_type": key, "concurrency": c}
        if pb is not None:
            entry.update(
                {
                    "certs_per_s": ratio(cb["certs_per_s"], pb["certs_per_s"]),
                    "p50": ratio(cb["p50_ms"], pb["p50_ms"]),
                    "p99": ratio(cb["p99_ms"], pb["p99_ms"]),
                    "server_cpu_per_cert": ratio(
                        cb["server_cpu_ms_per_cert"], pb["server_cpu_ms_per_cert"]
                    ),
                    "server_peak_rss": ratio(cb["server_peak_rss_mb"], pb["server_peak_rss_mb"]),
                    "pebble_cpu_to_floor": _to_floor(pb, floor),
                }
            )
        entry["certbroker_cpu_to_floor"] = _to_floor(cb, floor)
        out.append(entry)
    return out


def _to_floor(row: dict[str, Any], floor: dict[str, Any] | None) -> float | None:
    if floor is None:
        return None
    base = floor["floor_ms_per_certificate"].get(row["key_type"])
    return ratio(row["server_cpu_ms_per_cert"], base) if base else None


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's goals against this run's figures (met: True/False; None when not measured)."""
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool | None) -> None:
        out.append({"target": goal, "measured": measured, "met": met})

    rows = report.get("e2e") or []
    by = {(r["system"], r["key_type"], r["concurrency"]): r for r in rows}
    for (system, key, c), cb in by.items():
        if system != "certbroker" or c != 16:
            continue
        pb = by.get(("pebble", key, c))
        if pb is None:
            continue
        add(
            f"e2e {key} C=16: certs/s >= 2x Pebble",
            f"{cb['certs_per_s']} vs {pb['certs_per_s']} "
            f"({ratio(cb['certs_per_s'], pb['certs_per_s'])}x)",
            cb["certs_per_s"] >= 2 * pb["certs_per_s"],
        )
        add(
            f"e2e {key} C=16: p99 <= Pebble's",
            f"{cb['p99_ms']} ms vs {pb['p99_ms']} ms",
            cb["p99_ms"] <= pb["p99_ms"],
        )
        add(
            f"e2e {key} C=16: server CPU/cert <= Pebble's",
            f"{cb['server_cpu_ms_per_cert']} ms vs {pb['server_cpu_ms_per_cert']} ms",
            cb["server_cpu_ms_per_cert"] <= pb["server_cpu_ms_per_cert"],
        )
    pc = report.get("place_collect")
    if pc:
        cells = {(r["what"], r["concurrency"]): r for r in pc["rows"]}
        place = cells.get(("place with CSR", 16))
        if place:
            add(
                "place with CSR C=16: >= 500 req/s, p99 <= 50 ms",
                f"{place['requests_per_s']} req/s, p99 {place['p99_ms']} ms",
                place["requests_per_s"] >= 500 and place["p99_ms"] <= 50,
            )
        for kind in ("collect COMPLETE", "collect PENDING"):
            best = max(
                (r for (w, _c), r in cells.items() if w == kind),
                key=lambda r: r["requests_per_s"],
                default=None,
            )
            if best:
                add(
                    f"{kind}: >= 1,000 req/s",
                    f"{best['requests_per_s']} req/s at C={best['concurrency']}",
                    best["requests_per_s"] >= 1000,
                )
        nocsr = cells.get((place_collect.PACED_WITHOUT_CSR, 1))
        if nocsr:
            add(
                "place without CSR at half capacity (C=1): p99 <= 100 ms",
                f"p99 {nocsr['p99_ms']} ms; capacity {pc['keygen_capacity_per_s']} req/s",
                nocsr["p99_ms"] <= 100,
            )
    ve = report.get("validation_engine")
    if ve:
        add(
            f"{ve['names']:,} pending names re-checked within 60 s, peak RSS < 300 MB",
            f"{ve['seconds']} s ({ve['checks_per_s']} checks/s), {ve['peak_rss_mb']} MB",
            ve["finished"]
            and ve["seconds"] <= 60
            and ve["peak_rss_mb"] < 300
            and ve["checks"] >= ve["names"],
        )
    return out


def print_report(report: dict[str, Any]) -> None:
    for section in sections(report):
        print()
        print(table(section.title, section.header, section.rows))
    for key, what in (("profile", "the server"), ("upstream_profile", "upstream ACME serve")):
        prof = report.get(key)
        if prof:
            print()
            print(f"Profile of {what} under load (busy samples): {prof['path']}")
            for frame, share in prof["summary"]["inclusive"][:25]:
                print(f"  {share:5.1f}%  {frame}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="certbroker-bench-"))
    report: dict[str, Any] = {
        "meta": {
            "command": shlex.join(
                [
                    Path(sys.executable).name,
                    "-m",
                    "bench.run",
                    *(argv if argv is not None else sys.argv[1:]),
                ]
            ),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }
    }
    print(
        f"certbroker bench ({'smoke' if args.smoke else 'full'}); working in {work}; "
        f"load average {load_average()} on {report['meta']['machine']['nproc']} CPUs",
        flush=True,
    )
    try:
        with ChallTestSrv(work / "challtestsrv.log") as chall, DcvSite() as site:
            if "e2e" in args.sections:
                report["e2e"] = run_e2e(args, work, chall, site)
            if "place_collect" in args.sections:
                print("  place / collect alone ...", flush=True)
                report["place_collect"] = place_collect.run(
                    work / "place_collect",
                    chall=chall,
                    site=site,
                    key_type=args.key_types[0],
                    concurrencies=args.place_concurrency,
                    requests=args.requests,
                    requests_without_csr=args.requests_without_csr,
                    seed_orders=args.seed_orders,
                    processes=args.processes,
                    poll_seconds=args.poll_ms / 1000,
                    poll_max_seconds=args.poll_max_ms / 1000,
                    proposed=args.proposed,
                    idle_pause_seconds=0.0 if args.smoke else 5.0,
                )
            if "validation" in args.sections:
                print("  validation engine ...", flush=True)
                report["validation_engine"] = validation_engine.run(
                    work / "validation",
                    chall=chall,
                    site=site,
                    names=args.names,
                    names_per_order=args.names_per_order,
                    processes=args.processes,
                    limit_seconds=args.names_limit_s,
                    proposed=args.proposed,
                )
            if "upstream" in args.sections:
                print(
                    f"  upstream ACME: {args.upstream_n} orders at C={args.upstream_concurrency}, "
                    "certbroker + Pebble and Pebble directly ...",
                    flush=True,
                )
                report["upstream"] = upstream_e2e.run(
                    work / "upstream",
                    chall=chall,
                    site=site,
                    n=args.upstream_n,
                    concurrency=args.upstream_concurrency,
                    key_type=args.key_types[0],
                    processes=args.processes,
                    poll_seconds=args.poll_ms / 1000,
                    poll_max_seconds=args.poll_max_ms / 1000,
                    worker_poll_seconds=args.worker_poll,
                )
            if args.profile and "e2e" in args.sections:
                print("  profiling the certbroker server under load ...", flush=True)
                report["profile"] = run_profile(args, work, chall, site)
            if args.profile and "upstream" in args.sections:
                print("  profiling certbroker with its upstream under load ...", flush=True)
                report["upstream_profile"] = run_upstream_profile(args, work, chall, site)
        if "floor" in args.sections:
            print("  crypto floor ...", flush=True)
            ca_dirs = sorted(work.glob("*/ca")) + sorted(work.glob("*/*/ca"))
            report["crypto_floor"] = crypto_floor.run(
                args.key_types, ca_dirs[0] if ca_dirs else None, args.floor_seconds
            )
        if "e2e" in report:
            report["e2e_ratios"] = e2e_ratios(report["e2e"], report.get("crypto_floor"))
        report["targets"] = targets(report)
        report["meta"]["duration_s"] = round(time.monotonic() - started, 1)
        report["meta"]["machine"]["load_average_at_end"] = load_average()
        print_report(report)
        out = args.out or RESULTS / (
            f"bench-{'smoke-' if args.smoke else ''}{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out} in {report['meta']['duration_s']} s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
