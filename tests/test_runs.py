"""runs.py: every flag of train.py and eval.py has a --help line, and bad values stop with one line.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_runs.py
"""
import ast
import os
import subprocess
import sys

import pytest
from test_train import REPO

import eval as ev
import runs


def test_docstring_examples(doctest_examples):
    assert doctest_examples(runs, ("field_comments",)) == 1

# --------------------------------------------------------------------------------------------------
# The command line: --help for every flag, one-line errors
# --------------------------------------------------------------------------------------------------


def dataclass_source(path, name):
    source = open(os.path.join(REPO, path)).read()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)
    return "\n".join(source.splitlines()[node.lineno - 1:node.end_lineno])  # whole lines: the last comment too


@pytest.mark.parametrize("script, config", [("train.py", "Config"), ("eval.py", "EvalConfig")])
def test_every_flag_has_a_help_line(script, config):
    comments = runs.field_comments(dataclass_source(script, config))
    assert len(comments) > 25 and all(text for _, text in comments.values()), comments
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120).stdout
    flat = "".join(out.split())  # argparse re-wraps (and may break at hyphens): compare without whitespace
    for name, (group, text) in comments.items():
        assert f"--{name}{''.join(text.split())}" in flat, name  # the flag, then its comment as its description
        assert f"{group}:" in out


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent"], "train.py: error: --model '/nonexistent': no such folder, and not a hub id"),
    (["--lr", "-1"], "train.py: error: --lr -1.0: must be > 0"),
])
def test_bad_values_stop_with_one_line_and_no_traceback(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "train.py", "--out_dir", str(tmp_path / "run"), *args], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode != 0 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "run")  # nothing written


def test_eval_flags_are_checked_up_front(tmp_path):
    for argv, message in [(["--model", "/nonexistent"], "--model '/nonexistent': no such folder"),
                          (["--benchmark", "visualmath,/no/such.json"], "--benchmark '/no/such.json': no such file"),
                          (["--dtype", "fp16"], "--dtype 'fp16': use auto, bfloat16 or float32"),
                          (["--k", "many"], r"argument --k: invalid int value: 'many' \(--help lists every flag\)$"),
                          (["--curves", str(tmp_path / "log.jsonl")], "--curves '.*': no such file")]:
        with pytest.raises(SystemExit, match=f"^eval.py: error: {message}"):
            ev.parse_config(argv)
    with pytest.raises(SystemExit, match="holds no config.json"):
        ev.parse_config(["--model", str(tmp_path)])
