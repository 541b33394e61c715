"""`make bench`, in the order a run goes (stress/bench.py is the command line).

load.py      load generation: wrk, or the Python fallback; flat out or paced
stack.py     the servers under test as processes, and their RSS
measure.py   one function per measurement, each returning its result
results.py   those results, frozen dataclasses
targets.py   every target as data: what it reads, its bound, its threshold, its text
report.py    the console lines and BENCHMARKS.md's "Latest run" section
machine.py   the machine and commit a run measured
run.py       the run: the stack, the measurements in order, the report
"""
