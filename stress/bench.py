"""`make bench`: measure ingest against the framework floor and the storage ceiling, in one run.

Starts its own stack (embedded PostgreSQL and Redis, `labs-analytics serve`),
then measures and prints:

  (a) floor      bare FastAPI on uvicorn, one POST route answering 202: req/s, p50/p99
  (b) single     POST /v1/events, one event per request, same load: req/s, p50/p99, b/a
                 ((a) and (b) alternate over ROUNDS rounds; medians are reported)
  (c) batch      POST /v1/events, 100 events per request: events/s acknowledged
  (d) end to end events/s landed in PostgreSQL over SUSTAIN seconds at a paced rate,
                 and freshness (202 → row visible) p50/p99
  (e) ceiling    raw asyncpg COPY into the same `events` table: rows/s, and d/e
  plus the API's peak RSS, its RSS over a soak (SOAK seconds at half the max rate),
  and the load generator's own CPU use.

Results, the machine and the git commit go to BENCHMARKS.md (the "Latest run"
section is replaced; the history below it is kept). The targets it checks are
in stress/benchmark/targets.py; the package's docstring maps its modules.

    make bench                    # defaults: WORKERS=2, SUSTAIN=60, SOAK=60, ROUNDS=3
    make bench SOAK=600           # the 10-minute soak
    .venv/bin/python stress/bench.py --help

The load generator is wrk when installed (`apt-get install wrk`), else a
multi-process Python client. Everything runs on this machine, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from benchmark.run import Options, main  # noqa: E402  (stress/ is this script's folder)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    parser.add_argument("--seconds", type=int, default=10, help="each load phase (a, b, c)")
    parser.add_argument(
        "--rounds", type=int, default=int(os.environ.get("ROUNDS", "3")), help="(a, b) rounds"
    )
    parser.add_argument("--sustain", type=int, default=int(os.environ.get("SUSTAIN", "60")))
    parser.add_argument("--soak", type=int, default=int(os.environ.get("SOAK", "60")))
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    return Options(
        workers=args.workers,
        seconds=args.seconds,
        rounds=args.rounds,
        sustain=args.sustain,
        soak=args.soak,
        output=args.output,
    )


if __name__ == "__main__":
    main(parse_options())
