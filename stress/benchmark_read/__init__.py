"""`make bench-read`, in the order a run goes (stress/bench_read.py is the command line).

generate.py  the data set: its shape, one day of it as COPY text, loading it in parallel
queries.py   the measured requests, as data, from a few facts about the loaded data
measure.py   timing requests over HTTP and the raw-only answers in-process; the export
results.py   what a run measured, frozen dataclasses
targets.py   every target as data: which probe, which number, its threshold
report.py    the console table and BENCHMARKS.md's "Read benchmark" section
run.py       the run: the stack, the load, the rollup build, the measurements, the report

The servers and the machine come from the ingest benchmark (`stress.benchmark`).
"""
