"""`certbroker` with the fixes proposed in docs/PERFORMANCE.md applied as patches at start-up,
so a proposal can be measured (`bench/run.py --proposed`) before it is written into the module
that owns it. P1 (one TLS context for file checks), P2 (SQLite writers queue in Python) and P3
(`place` wakes the worker) have landed in the product, so nothing is patched now; the next
proposal measured this way goes into PATCHES and `apply`.

    python -m bench.proposed serve    # same arguments as `certbroker`
"""

from __future__ import annotations

PATCHES: tuple[str, ...] = ()


def apply() -> None:
    """Install the patches named in PATCHES (none at the moment)."""


def main() -> None:
    apply()
    from certbroker.cli import main as certbroker_main

    certbroker_main()


if __name__ == "__main__":
    main()
