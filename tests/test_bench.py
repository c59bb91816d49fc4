"""The benchmark scripts in bench/ start: each one's `--help` exits 0 when run as `python bench/<name>.py`
from the repository root, the way the README runs them.

Benchmarks are scripts, not timed tests (STYLE.md 14), so nothing else of them runs here; but a script no
test imports breaks silently when a module it imports moves or a helper in bench/common.py is renamed. With
--help each script gets through all its imports (bench/common.py first: it puts the root on sys.path) and
its argparse, and stops before any measurement. Seconds: the scripts start in parallel.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_bench.py
"""
import doctest
import importlib.util
import os
import subprocess
import sys

from conftest import REPO

BENCH = os.path.join(REPO, "bench")
SCRIPTS = sorted(name[:-3] for name in os.listdir(BENCH) if name.endswith(".py") and name != "common.py")


def test_every_bench_script_answers_help_from_the_repo_root():
    assert {"louvain", "probe", "weights", "step", "decode", "gpu"} <= set(SCRIPTS), SCRIPTS
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {name: subprocess.Popen([sys.executable, os.path.join("bench", f"{name}.py"), "--help"], cwd=REPO,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in SCRIPTS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"python bench/{name}.py --help failed:\n{err[-3000:]}"
        assert out.startswith(f"usage: {name}.py"), out[:200]


def test_no_bench_script_shadows_a_root_module():
    # `python bench/x.py` searches bench/ first until bench/common.py puts the root in front: a bench/atrl.py
    # would be found instead of atrl.py by any import before that (and a reader would meet two atrl.py)
    root_modules = {name[:-3] for name in os.listdir(REPO) if name.endswith(".py")}
    assert not root_modules & set(SCRIPTS + ["common"])


def test_common_docstring_examples():
    spec = importlib.util.spec_from_file_location("bench_common", os.path.join(BENCH, "common.py"))
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)  # not put in sys.modules: the test session's `common` stays free
    result = doctest.testmod(common)
    assert result.attempted >= 2 and result.failed == 0
