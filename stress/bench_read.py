"""`make bench-read`: the read side's latency over a large generated data set, with and
without the rollups.

Starts its own embedded PostgreSQL and Redis, COPYs EVENTS generated events
(90 days, 5 products, 50,000 users, 20 names; skewed like real use) into
`events`, builds the rollups from scratch, starts `labs-analytics serve
--no-flusher` and measures p50/p95 over RUNS runs of: a 30-day daily series,
DAU/WAU/MAU over 90 days, a top-20 property breakdown, latency percentiles by
route, a 3-step funnel, 8-week retention, one user's year summary, and the
NDJSON export's rows/s and the API's RSS. Beside each /v1/query answer, the
same answer from raw rows only. Targets: stress/benchmark_read/targets.py.
Results go to BENCHMARKS.md's "Read benchmark" section (only that section).

    make bench-read                   # 10,000,000 events
    make bench-read EVENTS=200000     # a quick run
    .venv/bin/python stress/bench_read.py --help
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from stress.benchmark_read.run import Options, main  # noqa: E402  (the repository root)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=int(os.environ.get("EVENTS", "10000000")), help="generated"
    )
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each request")
    parser.add_argument(
        "--raw-runs", type=int, default=20, help="measured runs of each raw-only answer"
    )
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    return Options(
        events=args.events,
        runs=args.runs,
        raw_runs=args.raw_runs,
        workers=args.workers,
        output=args.output,
    )


if __name__ == "__main__":
    main(parse_options())
