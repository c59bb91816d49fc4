"""What the benchmark scripts in bench/ share: the import path to the method's modules.

The scripts are run from the repository root as `python bench/<name>.py`. Python then puts bench/ (the
script's folder), not the root, at the head of sys.path, so `import atrl` would fail; each script therefore
imports this module first, and it puts the root in front. That is the one place the path is touched.
The scripts are named so that none is also a root module's name (bench/weights.py times atrl.py; a
bench/atrl.py would be found by `import atrl` before the real one when bench/ is searched first).

Run: nothing to run; `python -m pytest -q tests/test_bench.py` checks that every script starts.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # in front of bench/: a root module always wins over a script of the same name
