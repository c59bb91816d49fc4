"""The benchmark scripts in bench/ start: each one's `--help` exits 0 when run as `python bench/<name>.py`
from the repository root, the way the README runs them.

Benchmarks are scripts, not timed tests (STYLE.md 14), so nothing else of them runs here; but a script no
test imports breaks silently when a module it imports moves or a helper in bench/common.py is renamed. With
--help each script gets through all its imports (bench/common.py first: it puts the root on sys.path) and
its argparse, and stops before any measurement. Seconds: the scripts start in parallel. bench/gpu.py's own
machinery is checked too, since a lent GPU's minutes depend on it: without CUDA it says that nothing was
measured and exits 0, and a section that runs past its budget is stopped while the next one still runs.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_bench.py
"""
import doctest
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = os.path.join(REPO, "bench")


def torch_cuda_available():
    import torch
    return torch.cuda.is_available()


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


def test_gpu_bench_without_cuda_says_nothing_was_measured():
    if torch_cuda_available():
        pytest.skip("a GPU is here: bench/gpu.py would measure")
    proc = subprocess.run([sys.executable, os.path.join("bench", "gpu.py")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "nothing was measured" in proc.stdout, proc.stdout + proc.stderr


def test_gpu_bench_stops_a_section_at_its_budget_and_runs_the_next(tmp_path):
    # a 4 s budget over two sections: the CUDA tests' pytest (which takes longer just to collect) is stopped at its
    # share, what it printed is kept, the default run gets what is left, and the report says what happened to each
    out = tmp_path / "gpu.md"
    proc = subprocess.run([sys.executable, os.path.join("bench", "gpu.py"), "--shrink", "--sections", "tests,default",
                           "--budget", "4", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== tests: stopped: out of time" in proc.stdout and "=== default:" in proc.stdout
    report = out.read_text()
    assert "| tests | stopped: out of time" in report and "| default |" in report and "<summary>log</summary>" in report


def test_gpu_bench_names_a_missing_package_and_skips_only_that_section(tmp_path):
    # a lent machine without pytest: the tests section says what to install in one line and is skipped, the next
    # section still runs (here: none chosen but tests, so nothing else costs time), and the exit code says so
    script = ("import importlib.util, os, runpy, sys\n"
              "find = importlib.util.find_spec\n"
              "importlib.util.find_spec = lambda name, *a: None if name == 'pytest' else find(name, *a)\n"
              f"sys.argv = ['bench/gpu.py', '--shrink', '--sections', 'tests', '--out', {str(tmp_path / 'gpu.md')!r}]\n"
              "sys.path[0] = os.path.abspath('bench')\n"
              "runpy.run_path('bench/gpu.py', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== tests: skipped: missing pytest (pip install pytest)" in proc.stdout
    assert "1 section(s), 45 s of work on one H100 by my estimate" in proc.stdout  # printed before anything runs
