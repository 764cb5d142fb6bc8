"""Coverage-guided fuzzing harnesses (atheris) for the agent's parsers, for runs longer than the
hypothesis tests in tests/test_fuzz_*.py.

One module per target (`fuzz_<target>.py`), each with `test_one_input(data: bytes)` that feeds the
bytes to the product code and raises only on a real defect (an exception type the contract does
not allow, or a broken answer), and `KNOWN`: predicates that recognise bugs already reported, so a
long run is not stopped by them (they are counted and printed once; `--strict` stops on them too).
Run: `python -m tools.fuzz TARGET [--runs N] [--seconds S]` or `tools/fuzz/run.sh [SECONDS]`
(docs/TESTING.md). Without atheris installed, a plain random-bytes loop drives the same harnesses.

Must never: touch the network beyond loopback socket pairs, write outside a temporary directory,
or be imported by the agent itself.
"""

TARGETS = ("rpc", "console", "config", "deviceinfo", "dcr", "urequests")
