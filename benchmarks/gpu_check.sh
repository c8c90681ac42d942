#!/usr/bin/env bash
# The GPU checks in one go on a CUDA machine, run from a checkout with that machine's own
# python3 and torch (the package need not be installed): the CUDA tests, then the
# benchmark in one process without the widget timings. Extra arguments go to bench.py,
# e.g. --json out.json. The benchmark runs even if a test fails; the exit status is the
# tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
"$python" -m pytest -q -rs -k cuda tests/test_trainer.py tests/test_tiling.py
tests=$?
"$python" benchmarks/bench.py --device cuda --one-process --no-widgets "$@"
exit "$tests"
