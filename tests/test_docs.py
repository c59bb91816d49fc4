"""Every command the README and docs/ show still exists, with every flag it is shown with.

Commands are read from the Markdown itself: fenced code blocks (lines joined at a trailing backslash) and inline
code spans that start with `python` or `torchrun`. For each script named (train.py, eval.py, experiments/v3.py,
bench/gpu.py, ...) the test runs `python <script> --help` once, from the repository root as the docs do, and checks
that it exits 0 and that every `--flag` any documented command passes to that script is among those --help lists.
A flag renamed or a script moved without its docs fails here.
Run: `python -m pytest -q tests/test_docs.py`.
"""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

PAGES = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def documented_commands(text):
    """The python/torchrun command lines of a Markdown text, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands.append(line.split(" #")[0].strip())
    commands += re.findall(r"`((?:python|torchrun) [^`]+)`", text)
    return [c for c in commands if re.match(r"(?:\S*/)?(?:python3?|torchrun)\b", c)]


def script_and_flags(command):
    """(script path, [--flags]) of one command, or None when it runs no script of ours (python -m pytest, ...)."""
    tokens = shlex.split(command.split(" && ")[-1])
    script = next((t for t in tokens if t.endswith(".py")), None)
    if script is None or "<" in script:  # a placeholder such as bench/<name>.py
        return None
    after = tokens[tokens.index(script) + 1:]
    return script, [t.split("=")[0] for t in after if t.startswith("--")]


def test_the_reader_finds_commands_scripts_and_flags():
    text = "x\n```bash\npython train.py --model M \\\n    --bf16 1   # note\npython -m pytest -q tests\n```\n" \
           "Run `python experiments/v3.py --skip_training` or `torchrun --nproc_per_node 8 eval.py --k 4`, " \
           "any `python bench/<name>.py`."
    found = [script_and_flags(c) for c in documented_commands(text)]
    assert found == [("train.py", ["--model", "--bf16"]), None, ("experiments/v3.py", ["--skip_training"]),
                     ("eval.py", ["--k"]), None]


def all_documented():
    """{script: set of flags} over every page."""
    scripts = {}
    for page in PAGES:
        for command in documented_commands(open(page, encoding="utf-8").read()):
            found = script_and_flags(command)
            if found:
                scripts.setdefault(found[0], set()).update(found[1])
    return scripts


DOCUMENTED = all_documented()


def test_the_docs_show_the_main_commands():
    assert {"train.py", "eval.py", "models/tiny.py", "experiments/v2.py", "experiments/v3.py",
            "experiments/report.py", "bench/gpu.py"} <= set(DOCUMENTED)


@pytest.mark.parametrize("script", sorted(DOCUMENTED))
def test_each_documented_command_runs_with_its_flags(script):
    assert os.path.isfile(os.path.join(REPO, script)), f"the docs run {script}, which does not exist"
    proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = set(re.findall(r"--\w+", proc.stdout))
    missing = sorted(DOCUMENTED[script] - listed - {"--help"})
    assert not missing, f"the docs pass {missing} to {script}, whose --help does not list them"
