"""infra/runs.py: a run is never lost, survives kill -9 at any instant, is tracked, and bad flags stop with one line.

The centrepiece is a fault-injection test: train.py as a subprocess is killed with SIGKILL at named points
inside a checkpoint save and in the middle of a log write (ATRL_TEST_HOOK, checkpoints.fault_hook) and at random
moments, resumed after each kill, and must end with every step logged exactly once and the same rewards,
losses and weights as an uninterrupted run -- and so must the TensorBoard events. Around it: the run-dir
guard (re-run refuses, --resume without a checkpoint refuses and changes nothing, --overwrite), checkpoint
pruning and fallback, a state file that cannot run code (weights_only=True), W&B offline, --help lines
for every flag, and one-line config errors.
Run: OMP_NUM_THREADS=1 python -m pytest -q -s tests/test_runs.py   (-s prints what each kill did)
"""
import ast
import glob
import hashlib
import importlib.util
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from test_train import REPO, SMALL, records, run_train, weights

import eval as ev
from infra import checkpoints, cli, runs

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def snapshot(folder):
    """{relative path: sha256} of every file under folder: 'changes nothing' means equal snapshots."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def fake_checkpoint(out_dir, step, state=None):
    """A checkpoint-<step>/ with the files checkpoints.latest_checkpoint looks for (tiny stand-ins for the weights) and,
    as a save writes it, their manifest."""
    path = os.path.join(out_dir, f"checkpoint-{step}")
    os.makedirs(path, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        open(os.path.join(path, name), "w").write("{}")
    torch.save(state if state is not None else {"step": step}, os.path.join(path, "state.pt"))
    checkpoints.write_manifest(path, step)
    return path


def train_env(hook=None):
    """The environment of a train.py under test: one thread, unbuffered, ATRL_TEST_HOOK=hook (or none)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ATRL_TEST_HOOK", None)
    if hook:
        env["ATRL_TEST_HOOK"] = hook
    return env


def start_train(ckpt, out_dir, *args, hook=None):
    """train.py in the background (stderr to out_dir's sibling .err file); ATRL_TEST_HOOK=hook if given."""
    err = open(f"{out_dir}.err", "w")
    return subprocess.Popen([sys.executable, "train.py", "--model", ckpt, "--out_dir", str(out_dir), *SMALL, *args],
                            cwd=REPO, env=train_env(hook), stdout=subprocess.DEVNULL, stderr=err)


def stderr_tail(out_dir):
    return open(f"{out_dir}.err").read()[-3000:]


def logged_steps(out_dir):
    """Steps of the step records in log.jsonl, in file order (runs.read_log drops a torn last line)."""
    path = os.path.join(out_dir, "log.jsonl")
    return [r["step"] for r in runs.read_log(path)[1:] if r["step"] >= 0] if os.path.exists(path) else []


def strip_times(recs):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in recs]

# --------------------------------------------------------------------------------------------------
# The fault-injection test
# --------------------------------------------------------------------------------------------------


def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_run(warm_checkpoint, tmp_path):
    steps = 8
    common = ["--steps", str(steps), "--save_every", "1", "--keep_checkpoints", "2"]
    # with TensorBoard installed (requirements.txt), its event files must come out right under the kills too
    tracking = ["--report_to", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    straight, out = tmp_path / "straight", tmp_path / "killed"
    uninterrupted = start_train(warm_checkpoint, straight, *common)  # alongside the first killed runs

    # Killed inside the very first save: there is no complete checkpoint, so --resume 1 refuses, changing nothing.
    proc = start_train(warm_checkpoint, out, *common, *tracking, hook="checkpoint_model_written:1")
    assert proc.wait(timeout=300) == -signal.SIGKILL, stderr_tail(out)
    print("\nkill at checkpoint_model_written:1 ->", sorted(os.listdir(out)), "logged", logged_steps(out))
    assert checkpoints.latest_checkpoint(str(out))[:2] == (None, None) and logged_steps(out) == [0]
    before = snapshot(out)
    proc = run_train(warm_checkpoint, out, *common, "--resume", "1", check=False)
    assert proc.returncode != 0 and "no complete checkpoint" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(out) == before
    print("  --resume 1 refused:", proc.stderr.strip().splitlines()[-1])

    # --overwrite 1 starts over; then one kill per run: at named points, then at random moments.
    rng = random.Random(15)
    kills = [("--overwrite", "checkpoint_written:2"),     # temp dir complete, not yet renamed
             ("--resume", "checkpoint_renamed:3"),        # new checkpoint in place, old ones not yet deleted
             ("--resume", "checkpoint_pruning:4"),        # an old checkpoint renamed aside, not yet deleted
             ("--resume", "log_torn:4"),                  # half of step 4's record written
             ("--resume", "random: seconds after start"),
             ("--resume", "random: after the next record"),
             ("--resume", "")]                            # runs to the end
    newest = 0
    for flag, point in kills:
        hook = None if point.startswith("random") or not point else point
        proc = start_train(warm_checkpoint, out, *common, flag, "1", *tracking, hook=hook)
        if point == "random: seconds after start":  # anywhere: imports, model load, log rewrite, a step, a save
            time.sleep(rng.uniform(1.0, 7.0))
            proc.send_signal(signal.SIGKILL)
        elif point == "random: after the next record":
            seen = len(logged_steps(out))
            while proc.poll() is None and len(logged_steps(out)) <= seen:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=300)
        path, state, _ = checkpoints.latest_checkpoint(str(out))
        print(f"kill at {point or 'none (to the end)'} -> exit {rc}, newest complete {os.path.basename(path)}, "
              f"on disk {sorted(n for n in os.listdir(out) if n.startswith('checkpoint'))}, logged {logged_steps(out)}")
        assert rc == (0 if not point else -signal.SIGKILL) or (point.startswith("random") and rc == 0), stderr_tail(out)
        # never a moment without a complete checkpoint, never a step back, the log a clean prefix of the steps
        assert state["step"] >= newest
        newest = state["step"]
        assert logged_steps(out) == list(range(len(logged_steps(out)))) and len(logged_steps(out)) >= newest
        if rc == 0:
            break

    assert uninterrupted.wait(timeout=300) == 0, stderr_tail(straight)
    a, b = records(straight), records(out)
    assert [r["step"] for r in b] == list(range(steps))  # every step logged exactly once
    assert strip_times(a) == strip_times(b)                # same rewards, losses, grad norms, lr, eval
    assert a[0]["grad_norm"] > 0
    wa, wb = weights(straight), weights(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == [f"checkpoint-{steps - 1}", f"checkpoint-{steps}"]
    if tracking:  # TensorBoard saw the same: each step once (at x = step + 1), the values of log.jsonl
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(out / "tensorboard"))
        acc.Reload()
        full = [r for r in runs.read_log(str(out / "log.jsonl"))[1:]]
        for key in ("reward", "loss", "grad_norm", "eval_accuracy", "time_step"):
            expect = [(r["step"] + 1, float(torch.tensor(r[key], dtype=torch.float32))) for r in full if key in r]
            assert [(e.step, e.value) for e in acc.Scalars(key)] == expect, key
        assert set(acc.Tags()["scalars"]) == {name for r in full for name in tracked_keys(r)}

    # A new run into a folder that holds a run refuses, and the folder stays as it was.
    before = snapshot(out)
    proc = run_train(warm_checkpoint, out, *common, check=False)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(out) == before

# --------------------------------------------------------------------------------------------------
# The run directory: refuse, resume, overwrite (in process, on stand-in checkpoints)
# --------------------------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this runs code -- what a shared checkpoint could do to whoever resumes from it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_resume_takes_the_newest_complete_checkpoint_and_never_runs_its_code(tmp_path):
    out = str(tmp_path)
    fake_checkpoint(out, 2)
    os.remove(os.path.join(fake_checkpoint(out, 3), "state.pt"))                    # killed copy: no state
    open(os.path.join(fake_checkpoint(out, 4), "state.pt"), "wb").write(b"PK\x03\x04trunc")  # truncated state
    marker = str(tmp_path / "code-ran")
    fake_checkpoint(out, 5, state={"step": 5, "evil": RunsCode(marker)})             # would run code if unpickled
    fake_checkpoint(out, 6)
    os.remove(os.path.join(out, "checkpoint-6", "model.safetensors"))                 # no weights
    os.makedirs(os.path.join(out, "checkpoint-7.tmp"))                                # a save in progress
    path, state, _ = checkpoints.latest_checkpoint(out)
    assert path == os.path.join(out, "checkpoint-2") and state == {"step": 2}
    assert not os.path.exists(marker), "torch.load ran code from a checkpoint"


def test_run_dir_guard(tmp_path):
    out = str(tmp_path / "run")
    assert runs.prepare_run_dir("t", out, resume=0, overwrite=0) == (None, None)      # nothing there: a new run
    with pytest.raises(SystemExit, match="holds no run"):
        runs.prepare_run_dir("t", out, resume=1, overwrite=0)
    assert not os.path.exists(out)                                                     # refusing creates nothing
    lock = runs.claim_run_dir("t", out, overwrite=0)
    runs.start_log(os.path.join(out, "log.jsonl"), {"config": {}}, 0)
    with pytest.raises(SystemExit, match="already holds a run .*--resume 1.*--overwrite 1"):
        runs.prepare_run_dir("t", out, resume=0, overwrite=0)
    with pytest.raises(SystemExit, match="no complete checkpoint"):
        runs.prepare_run_dir("t", out, resume=1, overwrite=0)
    with pytest.raises(SystemExit, match="contradict"):
        runs.prepare_run_dir("t", out, resume=1, overwrite=1)
    with pytest.raises(SystemExit, match="another process"):                          # one writer at a time
        runs.claim_run_dir("t", out, overwrite=0)
    lock.close()
    fake_checkpoint(out, 3)
    os.makedirs(os.path.join(out, "tensorboard"))
    assert runs.prepare_run_dir("t", out, resume=1, overwrite=0)[1] == {"step": 3}
    assert runs.prepare_run_dir("t", out, resume=0, overwrite=1) == (None, None)
    runs.claim_run_dir("t", out, overwrite=1).close()
    assert sorted(os.listdir(out)) == [".lock"]                                        # the old run is gone


def test_save_keeps_the_newest_checkpoints_and_clears_leftovers(tmp_path):
    out = str(tmp_path)
    os.makedirs(os.path.join(out, "checkpoint-9.tmp"))          # left by a killed save
    os.makedirs(os.path.join(out, "checkpoint-1.deleting"))     # left by a killed deletion

    def write_model(path):
        for name in ("config.json", "model.safetensors"):
            open(os.path.join(path, name), "w").write("{}")
    for step in range(1, 5):
        checkpoints.save_checkpoint(out, step, write_model, {"step": step, "rng": checkpoints.rng_state()}, keep=2)
    assert sorted(os.listdir(out)) == ["checkpoint-3", "checkpoint-4"]
    assert checkpoints.latest_checkpoint(out)[1]["step"] == 4


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    import numpy as np

    torch.manual_seed(1); random.seed(2); np.random.seed(3); np.random.randn()  # noqa: E702  (a cached gaussian too)
    torch.save({"rng": checkpoints.rng_state()}, tmp_path / "state.pt")
    first = (torch.rand(3), random.random(), np.random.randn(2))
    checkpoints.set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.randn(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and (first[2] == again[2]).all()


def test_resumed_log_keeps_only_steps_before_the_checkpoint(tmp_path):
    path = str(tmp_path / "log.jsonl")
    lines = [{"config": {"lr": 1}}, {"step": -1, "eval_accuracy": 0.5}] + [{"step": s} for s in range(4)]
    open(path, "w").write("\n".join(json.dumps(x) for x in lines) + '\n{"step": 4, "rew')  # torn by a kill
    kept = runs.start_log(path, {"config": {"lr": 2}}, start_step=2)
    assert kept == lines[1:4] and runs.read_log(path) == [{"config": {"lr": 2}}, *lines[1:4]]
    runs.append_log(path, {"step": 2})
    assert runs.read_log(path)[-1] == {"step": 2}
    open(path, "a").write('{"step": 3, "rew\n{"step": 4}\n')  # a torn line that is not last is corruption
    with pytest.raises(ValueError, match="line 6 is not JSON"):
        runs.read_log(path)


def test_docstring_examples(doctest_examples):
    found = doctest_examples(cli, ("field_comments",)) + doctest_examples(runs, ("read_log",))
    assert found + doctest_examples(checkpoints, ("write_errno",)) == 6

# --------------------------------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------------------------------


def tracked_keys(record):
    """The names a tracker shows for a log record: every number, and each interval [lo, hi] as <key>_lo/_hi (not a
    dict such as step 0's `kernels`: trackers plot numbers)."""
    for k, v in record.items():
        if isinstance(v, list):
            yield from (f"{k}_lo", f"{k}_hi")
        elif k != "step" and not isinstance(v, dict):
            yield k


def wandb_history(run_file):
    """The history rows of an offline W&B run file. Its format is LevelDB's log, as wandb's datastore writes
    it: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of records, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of a protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    data, i, piece, rows = open(run_file, "rb").read(), 7, b"", []
    assert data[:4] == b":W&B"
    while i + 7 <= len(data):
        if 32768 - i % 32768 < 7:  # a block's tail too short for a header is zero padding
            i += 32768 - i % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[i:i + 7])
        piece, i = piece + data[i + 7:i + 7 + length], i + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(piece)
            piece = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_report_to_wandb_offline_logs_the_keys_of_log_jsonl(warm_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is in requirements.txt; --report_to wandb needs it")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network here; `wandb sync` would upload it later
    run_train(warm_checkpoint, tmp_path, "--steps", "2", "--report_to", "wandb")
    log = runs.read_log(str(tmp_path / "log.jsonl"))[1:]
    [run_file] = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} | {"x": row["_step"]} for row in wandb_history(run_file)]
    expect = [{k: v for k, v in r.items() if k != "step" and not isinstance(v, (list, dict))}  # numbers only
              | {f"{k}_{end}": x for k, v in r.items() if isinstance(v, list) for end, x in zip(("lo", "hi"), v)}
              | {"x": r["step"] + 1} for r in log]
    assert rows == expect
    assert any(k.endswith("_ci_lo") for row in rows for k in row)  # the intervals did reach the tracker


def test_missing_tracker_package_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(SystemExit, match=r"^train.py: error: --report_to wandb: the wandb package is not installed; "
                                         r"pip install wandb, or use --report_to none$"):
        runs.check_tracker("train.py", "wandb")
    with pytest.raises(SystemExit, match="--report_to 'mlflow': use one of none, tensorboard, wandb"):
        runs.check_tracker("train.py", "mlflow")

# --------------------------------------------------------------------------------------------------
# The command line: --help for every flag, one-line errors
# --------------------------------------------------------------------------------------------------


def dataclass_source(path, name):
    source = open(os.path.join(REPO, path)).read()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)
    return "\n".join(source.splitlines()[node.lineno - 1:node.end_lineno])  # whole lines: the last comment too


@pytest.mark.parametrize("script, config", [("train.py", "Config"), ("eval.py", "EvalConfig"),
                                            ("experiments/report.py", "ReportConfig")])
def test_every_flag_has_a_help_line(script, config):
    comments = cli.field_comments(dataclass_source(script, config))
    assert len(comments) > 15 and all(text for _, text in comments.values()), comments
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


def test_bad_data_stops_with_one_line_and_writes_nothing(random_checkpoint, tmp_path):
    # an evaluation-only benchmark as training data (no split named), and a local file whose rows lack their answer
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"pid": "1", "question": "What is 2 + 2?", "image": "x.png"}) + "\n")  # MathVista-shaped
    for args, message in [(["--dataset", "AI4Math/MathVista"], "--dataset 'AI4Math/MathVista' / --eval_dataset '': "
                                                               "MathVista is an evaluation benchmark"),
                          (["--eval_dataset", str(bad)], "--dataset 'visualmath' / --eval_dataset '.*bad.jsonl': .*no row "
                                                         "has a gold answer")]:
        proc = subprocess.run([sys.executable, "train.py", "--model", random_checkpoint, "--out_dir",
                               str(tmp_path / "run"), *args], cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert re.match(f"train.py: error: {message}", last), last
        assert not os.path.exists(tmp_path / "run")  # the run dir is claimed only once the data has loaded
    with pytest.raises(SystemExit, match="^eval.py: error: --benchmark: cannot tell which split of nope .*pass --split"):
        ev.run_accuracy(ev.parse_config(["--benchmark", "visualmath,nope", "--limit", "2"]))  # before any model


def test_eval_flags_are_checked_up_front(tmp_path):
    for argv, message in [(["--model", "/nonexistent"], "--model '/nonexistent': no such folder"),
                          (["--benchmark", "visualmath,/no/such.json"], "--benchmark '/no/such.json': no such file"),
                          (["--dtype", "fp16"], "--dtype 'fp16': use one of auto, bfloat16, float32"),
                          (["--k", "many"], r"argument --k: invalid int value: 'many' \(--help lists every flag\)$"),
                          (["--curves", str(tmp_path / "log.jsonl")], "--curves '.*': no such file")]:
        with pytest.raises(SystemExit, match=f"^eval.py: error: {message}"):
            ev.parse_config(argv)
    runs.start_log(str(tmp_path / "log.jsonl"), {"config": {}}, 0)
    fake_checkpoint(str(tmp_path), 40)
    with pytest.raises(SystemExit, match="holds no config.json; did you mean .*checkpoint-40"):
        ev.parse_config(["--model", str(tmp_path)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nccl)")
def test_all_reduce_takes_cpu_tensors_under_nccl_on_cuda():
    # the loop all-reduces CPU tensors (counts, log sums, the skip flag); nccl alone refuses them
    import torch.distributed as dist
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29931", rank=0, world_size=1)
    try:
        t = torch.tensor([1.0, 2.0], dtype=torch.float64)
        assert runs.all_reduce(t) is t and t.tolist() == [1.0, 2.0] and t.device.type == "cpu"
    finally:
        dist.destroy_process_group()
