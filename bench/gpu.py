"""Benchmark: every GPU figure of the project in one budgeted command, printed as it is measured.

A GPU is lent to this project rarely and briefly, so one command measures everything a GPU can tell us and
stops in time: each section runs as a subprocess with its own budget, its output is streamed line by line the
moment it is printed (prefixed with the section and the seconds since the start), a section that runs out of
time is stopped -- what it printed so far is kept -- and the next one runs. At the end a markdown report (the
tables each section printed, then every section's whole log) is written to --out.

Sections, in order: correctness first, then speed. The seconds are my estimate of each section's work on one
H100 (none is measured: no GPU was lent to write this); they are printed before anything starts, sum to 480 s
(a lent machine gives a command 600 s), and are the budgets, shared out in these proportions (time a section
leaves unused goes to the next one):

    tests     45   the CUDA-only tests (pytest -k cuda on the files that hold them): what the probe promises under
                   each attention kernel (flash, efficient, cuDNN, math; fp32 and bf16), the decode engine's graph
                   replay on the tiny model; pytest start-up and the tiny SFT fixture (~20 s of CPU) dominate
    replay    35   bench/decode.py --config 3b --exactness only: graph replay = the eager step, bit for bit, at
                   Qwen2.5-VL-3B's config (batch 16, 160 tokens: two length buckets captured), and the attention
                   kernels prefill and step ran; building the random 3B model (~15 s) dominates
    vision    15   bench/vision.py --fused: the 3B vision tower on one image at train.py's max_pixels, its ~1,000
                   windowed attention calls (one per window per block) against ops/vision_windows.py's one call per
                   block, and their share of the tower + decoder prefill (host overhead: the CPU cannot tell)
    probe     45   bench/probe.py --suite 3b: the probe's cost in a no-grad forward at 3B shapes (B=4, S=2114,
                   1024 image and 1024 response tokens), 6 settings x (1 + 4 rounds) of ~0.5 s, the kernels it read
    step      80   bench/step.py --config 3b --sections step: the RL step for uniform (GRPO), atrl, vppo, entropy
                   at 3B shapes: time per arm, ratio to uniform, peak memory, the kernels of each arm's forward and
                   backward; 5 arms x (1 warm-up + 2 rounds) of ~3-5 s, plus the model build
    decode    55   bench/decode.py --config 3b --exactness none: rollout decoding at batch 16, 64, 256: ms per step
                   and tokens/s beside the memory-bandwidth floor, hf generate at 16 for the speed-up
    decode_qwen3 40  bench/decode.py --config qwen3-4b: the engine's graph replay against its eager step first, then
                   the same speed rows at Qwen3-VL-4B-Instruct's config (head_dim 128 with 8 KV heads: a KV cache 4x
                   Qwen2.5-VL-3B's per token; q/k norms in every step), batch 16 and 64
    memory    55   bench/step.py --config 3b --recipe: peak memory of one step of the README's 3B recipe (fp32
                   weights under bf16 autocast, gradient checkpointing, AdamW, micro-batches of 4) with the decode
                   engine's bf16 weight copy and its KV cache for 128 rollouts held, as train.py holds them, and
                   the cards (24, 48, 80, 141 GB) it fits
    default  110   `python train.py` with nothing cached (the tiny model is built first, on the GPU), end to end:
                   the time to its first RL step, the held-out accuracy before and after, the kernels it logged
                   (a run longer than its budget is stopped: the time to its first step and the kernels are kept)

The correctness rows come first so that a session cut short still has them. Numba's first compile (10-30 s) is
paid once, in a background process started with the tests, so the step and default sections find it cached.
Each section says, before it starts, whether the packages it needs are here, and is skipped with one line
naming the missing ones (no `datasets`: the synthetic task, train.py on it and every section run without it;
.ci/nodatasets proves it). The exit code is 1 if a section failed or was skipped, 0 otherwise (a section
stopped at its budget is not a failure).

Without CUDA it says that nothing was measured and exits 0. With --shrink every section runs its CPU smoke
variant instead (2-layer 3B-wide models, small inputs, a 2-step train.py on a random tiny checkpoint), so this
script and everything it calls are tested on machines without a GPU (a few minutes on 2 cores).

Where the figures go: the report (--out, default bench/results/gpu.md; with --shrink bench/results/gpu-shrink.md, which
git ignores) and docs/performance.md, copied from it by hand with the date, GPU and versions.

Run (from the repository root):
    python bench/gpu.py                          # on a GPU machine: every section, ~8 minutes
    python bench/gpu.py --sections replay,probe  # some sections
    python bench/gpu.py --budget 300             # a smaller total budget (sections get their share of it)
    python bench/gpu.py --shrink                 # CPU smoke test of every section
"""

import common  # first: it puts the repository root on sys.path (see its docstring)

import argparse
import datetime
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import torch

# ------------------------------------------------------------------------------------------- config

SECTIONS = {"tests": 45, "replay": 35, "vision": 15, "probe": 45, "step": 80, "decode": 55, "decode_qwen3": 40,
            "memory": 55, "default": 110}  # seconds of work on one H100, my estimate (the docstring)
EVERY = ("torch", "transformers", "numpy", "numba", "PIL", "tqdm")  # what every section imports (bench/common.py, ...)
NEEDS = {"tests": ("pytest",)}  # and what a section needs beyond them (pip names differ: PIL is pillow)
PIP = {"PIL": "pillow"}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
parser.add_argument("--budget", type=float, default=0.0,
                    help="total seconds for all sections, shared in proportion to their budgets above (default 480 "
                         "= 8 min; with --shrink 900: a CPU is slower at everything)")
parser.add_argument("--shrink", action="store_true", help="run every section's CPU smoke variant (no GPU needed)")
parser.add_argument("--out", default="", help="markdown report (default bench/results/gpu.md, bench/results/gpu-shrink.md)")
args = parser.parse_args()

chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
unknown = [s for s in chosen if s not in SECTIONS]
if unknown:
    parser.error(f"--sections {','.join(unknown)}: use some of {', '.join(SECTIONS)}")
out_path = args.out or os.path.join(common.REPO, "bench", "results", "gpu-shrink.md" if args.shrink else "gpu.md")
cuda = torch.cuda.is_available()
if not cuda and not args.shrink:
    print("bench/gpu.py: no CUDA device here -- nothing was measured. On a GPU machine run `python bench/gpu.py`; "
          "`python bench/gpu.py --shrink` runs every section's CPU smoke test.")
    sys.exit(0)
PY = sys.executable


def missing(section):
    """The packages a section needs that are not installed here (checked in seconds, before a GPU minute is spent)."""
    return [PIP.get(name, name) for name in EVERY + NEEDS.get(section, ()) if importlib.util.find_spec(name) is None]


SCRATCH = tempfile.mkdtemp(prefix="atrl_gpu_bench_")  # the default run's cache and run folder: nothing cached


def commands(section):
    """The command line(s) of a section, and extra environment variables: (argv, env)."""
    shrink = args.shrink
    if section == "tests":  # the CUDA-only tests; on a CPU they collect and skip. addopts= : no xdist workers needed
        files = ["tests/test_connectivity.py", "tests/test_engine.py", "tests/test_runs.py"]
        return [PY, "-m", "pytest", "-q", "-rs", "-o", "addopts=", "-p", "no:cacheprovider", *files, "-k", "cuda"], {}
    if section == "replay":  # graph replay = the eager step at 3B, before any speed figure
        return [PY, "bench/decode.py", "--config", "3b", "--exactness", "only"] + (
            ["--shrink"] if shrink else ["--device", "cuda", "--batches", "16", "--new_tokens", "160"]), {}
    if section == "vision":
        return [PY, "bench/vision.py", "--fused"] + (["--shrink", "--side", "168", "--depth", "2", "--layers", "1",
                                                      "--repeats", "1"]
                                                      if shrink else ["--device", "cuda", "--dtype", "bf16", "--depth",
                                                                      "32", "--layers", "36", "--repeats", "5"]), {}
    if section == "probe":
        return [PY, "bench/probe.py", "--suite", "3b"] + (["--shrink", "--repeats", "1"] if shrink
                                                            else ["--repeats", "4"]), {}
    if section == "step":
        return [PY, "bench/step.py", "--config", "3b", "--sections", "step"] + (
            ["--shrink", "--repeats", "1"] if shrink else ["--device", "cuda", "--repeats", "2"]), {}
    if section == "decode":
        return [PY, "bench/decode.py", "--config", "3b", "--exactness", "none",
                "--budget_s", str(int(budget_of(section) - 15))] + (
            ["--shrink"] if shrink else ["--device", "cuda", "--batches", "16,64,256"]), {}
    if section == "decode_qwen3":  # the second family's geometry: engine.py's q/k norms and explicit head_dim
        return [PY, "bench/decode.py", "--config", "qwen3-4b", "--budget_s", str(int(budget_of(section) - 15))] + (
            ["--shrink"] if shrink else ["--device", "cuda", "--batches", "16,64"]), {}
    if section == "memory":
        return [PY, "bench/step.py", "--config", "3b", "--recipe", "--sections", "step", "--repeats", "1"] + (
            ["--shrink"] if shrink else ["--device", "cuda"]), {}
    if section == "default":  # a fresh cache: the tiny model is built as on a fresh clone
        env = {"ATRL_CACHE": os.path.join(SCRATCH, "cache"), "TQDM_DISABLE": "1"}
        run_dir = os.path.join(SCRATCH, "run")
        if not shrink:
            return [PY, "train.py", "--out_dir", run_dir], env
        from models import tiny  # CPU smoke: a random tiny checkpoint (seconds) instead of the warm-started build (minutes)
        model = tiny.make_random_checkpoint(os.path.join(SCRATCH, "random"))
        return [PY, "train.py", "--model", model, "--out_dir", run_dir, "--steps", "2", "--eval_size", "8",
                "--eval_k", "1", "--prompts_per_step", "4", "--group_size", "2"], env
    raise ValueError(section)


# ------------------------------------------------------------------------------------------- running


START = time.perf_counter()
total = args.budget or (900.0 if args.shrink else float(sum(SECTIONS.values())))  # 480 s on a GPU
shares = {s: SECTIONS[s] * total / sum(SECTIONS.values()) for s in chosen}  # each section's share
carry = 0.0  # seconds sections before left unused


def budget_of(section):
    return shares[section] + carry


def run_section(section):
    """Run one section's command, streaming its lines; stop it at its budget. Returns (status, seconds, lines)."""
    absent = missing(section)
    if absent:
        line = f"skipped: missing {', '.join(absent)} (pip install {' '.join(absent)})"
        print(f"\n=== {section}: {line}", flush=True)
        return line, 0.0, [line]
    argv, env = commands(section)
    budget = budget_of(section)
    print(f"\n=== {section}: {' '.join(argv)} (budget {budget:.0f} s)", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=common.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, start_new_session=True)
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True)
    reader.start()
    kept, status = [], None
    while True:
        left = budget - (time.perf_counter() - t0)
        try:
            line = lines.get(timeout=max(left, 0.01))
        except queue.Empty:  # out of time: stop the whole process group, keep what it printed
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            status = f"stopped: out of time after {budget:.0f} s"
            break
        if line is None:
            status = "ok" if proc.wait() == 0 else f"failed (exit code {proc.returncode})"
            break
        line = line.rstrip("\n")
        if "it/s]" in line or "s/it]" in line:  # a progress bar's redraw (tqdm writes to stderr, merged here)
            continue
        kept.append(line)
        print(f"[{section} {time.perf_counter() - START:6.1f}s] {line}", flush=True)
        if section == "default" and re.match(r"step\s+0 \|", line):  # train.py's line after its first RL step
            note = f"first RL step done {time.perf_counter() - t0:.1f} s after `python train.py` started"
            kept.append(note + " (nothing cached: the tiny model's build included)")
            print(f"[{section} {time.perf_counter() - START:6.1f}s] {kept[-1]}", flush=True)
    seconds = time.perf_counter() - t0
    if section == "default":  # the attention kernels train.py logged with its first step (ops/sdpa.py)
        logged = [json.loads(line) for line in open(os.path.join(SCRATCH, "run", "log.jsonl"))] if os.path.exists(
            os.path.join(SCRATCH, "run", "log.jsonl")) else []
        first = next((r for r in logged if "kernels" in r), None)
        if first is not None:
            kept.append(f"attention kernels train.py logged at step {first['step']}: {first['kernels']}")
            print(f"[{section} {time.perf_counter() - START:6.1f}s] {kept[-1]}", flush=True)
    print(f"=== {section}: {status}, {seconds:.0f} s", flush=True)
    return status, seconds, kept


def versions():
    import transformers
    gpu = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    return (f"{gpu}; torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if cuda else "") +
            f", transformers {transformers.__version__}, Python {sys.version.split()[0]}")


# ------------------------------------------------------------------------------------------- main

header = (f"# bench/gpu.py{' --shrink (CPU smoke test: these are not GPU figures)' if args.shrink else ''}\n\n"
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {versions()}\n"
          f"command: python bench/gpu.py {' '.join(sys.argv[1:])}\n")
print(header, flush=True)
print(f"bench/gpu.py: {len(chosen)} section(s), {sum(SECTIONS[s] for s in chosen)} s of work on one H100 by my estimate "
      f"(unmeasured: {', '.join(f'{s} {SECTIONS[s]}' for s in chosen)}); budget {total:.0f} s"
      f"{' (CPU smoke test: the estimate is not for this machine)' if args.shrink else ''}", flush=True)
# numba's first compile of the Louvain loops (10-30 s) in the background, on the CPU, while the first sections use
# the GPU: the sections that cluster (step, default) then load it from numba's cache
prewarm = subprocess.Popen([PY, "-c", "import sys; sys.path.insert(0, 'bench'); import common, atrl, torch; "
                            "atrl.token_weights(torch.rand(2, 16, 4), torch.rand(2, 16), torch.ones(2, 16, dtype=torch.bool))"],
                           cwd=common.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if not missing("step") else None
results = {}
for section in chosen:
    if section == "decode" and not os.path.exists(os.path.join(common.REPO, "bench", "decode.py")):
        results[section] = ("not run: bench/decode.py is missing", 0.0, [])
        continue
    results[section] = run_section(section)
    carry = max(0.0, budget_of(section) - results[section][1])

# the report: a summary table, the tables each section printed, then its whole log
report = [header, "| section | status | seconds |", "|---|---|---|"]
report += [f"| {s} | {status} | {sec:.0f} |" for s, (status, sec, _) in results.items()]
for section, (status, seconds, lines) in results.items():
    report += ["", f"## {section} ({status}, {seconds:.0f} s)", ""]
    report += [line for line in lines if line.startswith("|") or line.startswith("recipe peak")
               or line.startswith("FLOPs") or line.startswith("install") or "floor" in line
               or line.startswith("before RL") or line.startswith("first RL step") or line.startswith("done")
               or line.startswith("tiny Qwen2.5-VL") or line.startswith("held-out") or line.startswith("sdpa")
               or line.startswith("engine") or "attention kernels" in line or line.startswith("skipped")]
    report += ["", "<details><summary>log</summary>", "", "```", *lines, "```", "", "</details>"]
if prewarm is not None:
    prewarm.wait()
os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
with open(out_path, "w") as f:
    f.write("\n".join(report) + "\n")
shutil.rmtree(SCRATCH, ignore_errors=True)
print(f"\nbench/gpu.py: {len(results)} sections in {time.perf_counter() - START:.0f} s -> {out_path}")
for s, (status, sec, _) in results.items():
    print(f"  {s:12s} {status} ({sec:.0f} s)")
sys.exit(1 if any(status.startswith(("failed", "skipped")) for status, _, _ in results.values()) else 0)
