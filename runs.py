"""runs.py -- the run: its ranks, its directory; a run is never lost, survives kill -9 and can be watched live.

A training run lives in one folder, `--out_dir`, and this file owns everything that goes into it:

    out_dir/
      log.jsonl              {"config": ...} first, then one record per step; appended, fsync'ed
      checkpoint-<step>/     model + tokenizer + image processor (save_pretrained: loadable with from_pretrained)
                             + state.pt (optimizer, scheduler, RNG, step); the newest --keep_checkpoints of them
      checkpoint-<step>.tmp/ a save in progress (never read; removed by the next save)
      tensorboard/, wandb/   with --report_to tensorboard | wandb
      .lock                  held (flock) while a train.py writes here

The rules, and why each keeps a run safe:

  1. **A new run never overwrites an old one.** `out_dir` holds a run if it has a log.jsonl or a checkpoint;
     then train.py refuses unless it is told `--resume 1` (continue) or `--overwrite 1` (delete and restart).
     `--resume 1` without a complete checkpoint refuses too, and changes nothing on disk.
  2. **There is a complete checkpoint on disk at every instant** (once the first save has finished):
         write checkpoint-<s>.tmp/ -> fsync -> rename to checkpoint-<s>/ (atomic) -> delete the old ones
     An old checkpoint is first renamed aside (checkpoint-<s>.deleting, atomic), then removed, so a
     half-deleted folder never carries a checkpoint's name. Resume takes the newest checkpoint-<s>/ whose
     files are all there and whose state loads, and falls back to the next one if not.
  3. **Every step is logged exactly once.** A step's record is appended *before* its checkpoint is saved. A
     kill in between leaves a record of a step the checkpoint does not hold; resume rewrites the log
     (to a temp file, then an atomic rename) keeping only records of steps before the checkpoint's, and
     redoes the rest -- with the same numbers, because every random draw is restored or keyed by the step.
     A line torn by a kill in the middle of a write is dropped when the log is read.
  4. **Resuming runs no code from the checkpoint.** state.pt loads with torch.load(weights_only=True):
     it holds tensors, numbers, strings, lists and dicts only (the RNG states are converted to those).
  5. **The tracker is optional and behind a no-op stand-in** (`NoTracker`): the loop calls tracker.log(rec)
     whatever --report_to says. TensorBoard and W&B get the keys of log.jsonl, at x = step + 1 (updates done,
     as TRL logs), so the held-out accuracy before RL sits at x = 0.
  6. **One process per rank**: `setup_distributed` starts torchrun's process group from its environment
     variables (train.py and eval.py share it); only rank 0 writes into out_dir.

kill -9 safety needs only the atomic renames (the page cache outlives the process); the fsyncs add safety
against a power cut. Kill hook for tests: ATRL_TEST_HOOK=<point>:<step> makes the process SIGKILL itself at <point>
while saving / logging <step>; points: checkpoint_model_written (weights written, state not yet),
checkpoint_written (temp dir complete, not renamed), checkpoint_renamed (new one in place, old not yet
deleted), checkpoint_pruning (an old one renamed aside, not yet deleted), log_torn (half a record written).

References: HF Trainer's checkpoint-<step>/ layout and save_total_limit; torch.load(weights_only=True)
(PyTorch >= 2.6 default); TensorBoard's purge_step; nanoGPT/nanochat for the resume-from-checkpoint shape.

Use it (through train.py):
    python train.py --out_dir runs/a                  # a new run; stops with one line if runs/a holds one
    python train.py --out_dir runs/a --resume 1       # continue from the newest complete checkpoint
    python train.py --out_dir runs/a --overwrite 1 --report_to tensorboard   # then: tensorboard --logdir runs
Tests: OMP_NUM_THREADS=1 python -m pytest -q -s tests/test_runs.py   (-s prints what each injected kill did)
"""
import fcntl
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import uuid

import numpy as np
import torch

from cli import config_error, hub_shaped

# --------------------------------------------------------------------------------------------------
# Ranks: torchrun's environment variables -> a process group (no accelerate, no DeepSpeed)
# --------------------------------------------------------------------------------------------------


def setup_distributed():
    """(rank, world, local_rank, device); starts the process group when torchrun started this process (it sets
    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): nccl on GPUs, gloo on CPUs."""
    import torch.distributed as dist

    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, local_rank, device


def all_reduce(t):
    """Sum a tensor over ranks (in place; on the rank's device for nccl); a no-op on one process."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(t)
    return t

# --------------------------------------------------------------------------------------------------
# The run directory: refuse, resume or overwrite
# --------------------------------------------------------------------------------------------------


def _checkpoint_step(name):
    """checkpoint-<step> -> step; anything else (.tmp, .deleting, other files) -> None."""
    m = re.fullmatch(r"checkpoint-(\d+)", name)
    return int(m.group(1)) if m else None


def checkpoint_steps(out_dir):
    """Steps of the checkpoint-<step> folders in out_dir, newest first, complete or not ([] if out_dir is missing)."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return sorted((s for s in map(_checkpoint_step, names) if s is not None), reverse=True)


def newest_checkpoint_name(out_dir):
    """The name of the checkpoint-<step> folder with the largest step in out_dir ('' if none), complete or not."""
    steps = checkpoint_steps(out_dir)
    return f"checkpoint-{steps[0]}" if steps else ""


def run_files(out_dir):
    """What in out_dir makes it hold a run: the log and checkpoint folders (also leftovers and the pre-issue-15
    single `checkpoint/`)."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if n == "log.jsonl" or n.startswith("checkpoint"))


def load_state(path):
    """state.pt of a checkpoint, loaded without running code from it (weights_only=True)."""
    return torch.load(os.path.join(path, "state.pt"), weights_only=True, map_location="cpu")


def latest_checkpoint(out_dir):
    """(path, state) of the newest complete checkpoint-<step>/ in out_dir, or (None, None).

    Complete: config.json, the weights and state.pt are there and state.pt loads with its step. Folders that
    fail are skipped with a note (only a copy made outside this file can leave one: saves rename when done).
    """
    for step in checkpoint_steps(out_dir):
        path = os.path.join(out_dir, f"checkpoint-{step}")
        weights = any(os.path.exists(os.path.join(path, n)) for n in ("model.safetensors", "model.safetensors.index.json"))
        missing = [n for n in ("config.json", "state.pt") if not os.path.exists(os.path.join(path, n))]
        if missing or not weights:
            print(f"{path}: skipped, it has no {', '.join(missing + ([] if weights else ['model weights']))}")
            continue
        try:
            state = load_state(path)
        except pickle.UnpicklingError:  # weights_only refused an object: unpickling it could run code
            print(f"{path}: skipped, state.pt holds more than tensors and plain values (not loaded: it could run code)")
            continue
        except Exception as err:  # truncated or not a torch file
            print(f"{path}: skipped, state.pt does not load ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
            continue
        if isinstance(state, dict) and state.get("step") == step:
            return path, state
        print(f"{path}: skipped, state.pt is not the state of step {step}")
    return None, None


def prepare_run_dir(prog, out_dir, resume, overwrite):
    """Decide what happens to out_dir before anything is written (read-only; every rank may call it).

    Returns (checkpoint path, state) when resuming, else (None, None). Stops with one line when a new run
    would overwrite an old one, or when --resume 1 finds nothing to resume.
    """
    if resume and overwrite:
        config_error(prog, "--resume 1 and --overwrite 1 contradict each other: pick one")
    found = run_files(out_dir)
    if resume:
        path, state = latest_checkpoint(out_dir)
        if path is None and found:
            config_error(prog, f"--resume 1: --out_dir {out_dir!r} holds no complete checkpoint-<step>/ to resume from; "
                               f"check --out_dir, or start over with --overwrite 1 (deletes {', '.join(found)})")
        if path is None:
            config_error(prog, f"--resume 1: --out_dir {out_dir!r} holds no run (wrong folder?); drop --resume 1 to "
                               "start a new run there")
        return path, state
    if found and not overwrite:
        config_error(prog, f"--out_dir {out_dir!r} already holds a run ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}): "
                           "pass --resume 1 to continue it, --overwrite 1 to replace it, or choose another --out_dir")
    return None, None


def claim_run_dir(prog, out_dir, overwrite):
    """Create out_dir and hold its lock for the life of this process (master only); with `overwrite`, delete the
    old run first -- checkpoints, then trackers' files, the log last, so that a kill half way leaves a state
    that --resume or --overwrite still handles. Returns the lock file (keep a reference to it)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, ".lock"), "w")
    except OSError as err:
        config_error(prog, f"--out_dir {out_dir!r}: cannot write there ({err.strerror}); choose another --out_dir")
    try:  # released by the kernel when the process ends, however it ends
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        config_error(prog, f"--out_dir {out_dir!r}: another process is writing a run there; wait for it or choose "
                           "another --out_dir")
    if overwrite:
        for name in run_files(out_dir):
            if name != "log.jsonl":
                _remove(os.path.join(out_dir, name))
        for name in ("tensorboard", "wandb"):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        if os.path.exists(os.path.join(out_dir, "log.jsonl")):
            os.remove(os.path.join(out_dir, "log.jsonl"))
    return lock

# --------------------------------------------------------------------------------------------------
# Checkpoints: write new, rename into place, delete old
# --------------------------------------------------------------------------------------------------


def kill_hook(point, step):
    """Kill this process (SIGKILL: no cleanup, like kill -9) if ATRL_TEST_HOOK is `<point>:<step>`."""
    if os.environ.get("ATRL_TEST_HOOK") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path):
    """Flush a file or a folder entry to disk (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path, step=None):
    """Rename aside (atomic), then delete: a half-deleted folder never keeps a name resume would read.
    `step`: the save that prunes it (the test hook checkpoint_pruning:<step> kills between the two)."""
    if os.path.isdir(path):
        aside = path + ".deleting" if not path.endswith(".deleting") else path
        os.replace(path, aside)
        kill_hook("checkpoint_pruning", step)
        shutil.rmtree(aside, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def save_checkpoint(out_dir, step, write_model, state, keep):
    """out_dir/checkpoint-<step>/: write_model(folder) writes the from_pretrained files, then state.pt; written
    under a .tmp name, fsync'ed, renamed into place; then all but the newest `keep` checkpoints are removed."""
    final = os.path.join(out_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
    os.makedirs(tmp)
    write_model(tmp)
    kill_hook("checkpoint_model_written", step)
    torch.save(state, os.path.join(tmp, "state.pt"))
    for root, _, files in os.walk(tmp):
        for name in files:
            _fsync(os.path.join(root, name))
    _fsync(tmp)
    kill_hook("checkpoint_written", step)
    if os.path.exists(final):  # only an unusable one can be here (resume skipped it): an older one stays meanwhile
        _remove(final)
    os.replace(tmp, final)  # NOTE: the instant the new checkpoint exists; everything before left the old intact
    _fsync(out_dir)
    kill_hook("checkpoint_renamed", step)
    for old in checkpoint_steps(out_dir)[keep:]:
        _remove(os.path.join(out_dir, f"checkpoint-{old}"), step)
    for name in os.listdir(out_dir):  # leftovers of killed saves and deletions
        if name.startswith("checkpoint-") and name.endswith((".tmp", ".deleting")):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def rng_state():
    """Every RNG train.py draws from, as tensors / numbers / lists (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, list(internal), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def set_rng_state(state):
    """Inverse of rng_state()."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))

# --------------------------------------------------------------------------------------------------
# The log: append-only JSONL, rewritten atomically on resume
# --------------------------------------------------------------------------------------------------


def read_log(path):
    """All records of a log.jsonl (config first). A torn last line (a kill mid-write) is dropped.

    >>> import tempfile; p = os.path.join(tempfile.mkdtemp(), "log.jsonl")
    >>> _ = open(p, "w").write('{"config": {}}\\n{"step": 0}\\n{"step": 1, "rew')
    >>> read_log(p)
    [{'config': {}}, {'step': 0}]
    """
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # torn lines can only be last (resume rewrites the log before appending)
                raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}")
    return records


def start_log(path, header, start_step):
    """Begin log.jsonl: `header` first, then the old records of steps before `start_step` (resume); written to a
    temp file and renamed, so a kill here leaves the old log intact."""
    old = read_log(path)[1:] if start_step and os.path.exists(path) else []
    kept = [r for r in old if r.get("step", math.inf) < start_step]
    with open(path + ".tmp", "w") as f:
        for rec in [header, *kept]:
            f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return kept


def append_log(path, record):
    """Append one record as a line, on disk before this returns."""
    line = json.dumps(record) + "\n"
    with open(path, "a") as f:
        if os.environ.get("ATRL_TEST_HOOK") == f"log_torn:{record.get('step')}":
            f.write(line[:len(line) // 2])  # test hook: a kill in the middle of the write
            f.flush()
            kill_hook("log_torn", record.get("step"))
        f.write(line)
        f.flush()
        os.fsync(f.fileno())

# --------------------------------------------------------------------------------------------------
# Live tracking: TensorBoard or Weights & Biases, behind one interface; NoTracker when off
# --------------------------------------------------------------------------------------------------

TRACKERS = ("none", "tensorboard", "wandb")


def _scalars(record):
    """A record's numbers for a tracker: numbers as they are, an interval [lo, hi] as `<key>_lo` and `<key>_hi`
    (trackers plot scalars only; log.jsonl keeps the pair)."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[f"{k}_lo"], out[f"{k}_hi"] = float(v[0]), float(v[1])
    return out


class NoTracker:
    """--report_to none: the loop logs to it all the same, and nothing happens."""

    def log(self, record):
        pass

    def close(self):
        pass


class TensorBoardTracker:
    """Scalars under log.jsonl's keys in out_dir/tensorboard (tensorboard --logdir runs/). On resume,
    purge_step hides what a killed run logged past the checkpoint, so each step shows once."""

    def __init__(self, out_dir, config, start_step):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))

    def log(self, record):
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, record["step"] + 1)
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbTracker:
    """One W&B run per out_dir (its id kept in out_dir/wandb/run_id, so a resume continues it). Steps redone
    after a kill are logged with the same values; W&B keeps the first copy. Offline: WANDB_MODE=offline."""

    def __init__(self, out_dir, config, start_step):
        import wandb

        os.makedirs(os.path.join(out_dir, "wandb"), exist_ok=True)
        id_path = os.path.join(out_dir, "wandb", "run_id")
        if start_step and os.path.exists(id_path):
            run_id = open(id_path).read().strip()
        else:
            run_id = uuid.uuid4().hex[:8]  # W&B's id alphabet: lowercase letters and digits
            with open(id_path, "w") as f:
                f.write(run_id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "atrl"), name=os.path.basename(os.path.abspath(out_dir)),
                              id=run_id, resume="allow", dir=out_dir, config=config)

    def log(self, record):
        self.run.log(_scalars(record), step=record["step"] + 1)

    def close(self):
        self.run.finish()


def check_model(prog, flag, value):
    """A --model value must be "" (the tiny default), a from_pretrained dir (with config.json), or a hub id; a run
    folder gets its newest checkpoint suggested. (Here, not in cli.py, which this file imports: no circle.)"""
    if not value:
        return
    if os.path.isdir(value):
        if not os.path.exists(os.path.join(value, "config.json")):
            newest = newest_checkpoint_name(value)
            hint = f"did you mean {os.path.join(value, newest)}?" if newest else "pass a from_pretrained checkpoint dir"
            config_error(prog, f"--{flag} {value!r}: the folder holds no config.json; {hint}")
    elif not hub_shaped(value):
        config_error(prog, f"--{flag} {value!r}: no such folder, and not a hub id (owner/name): pass a checkpoint "
                           "dir holding config.json (runs/default/checkpoint-40) or e.g. Qwen/Qwen2.5-VL-3B-Instruct")


def check_tracker(prog, report_to):
    """Fail up front, in one line, if --report_to names a tracker whose package is missing."""
    if report_to not in TRACKERS:
        config_error(prog, f"--report_to {report_to!r}: use one of {', '.join(TRACKERS)}")
    if report_to != "none":  # the package is named as the tracker
        try:
            __import__(report_to)
        except ImportError:
            config_error(prog, f"--report_to {report_to}: the {report_to} package is not installed; "
                               f"pip install {report_to}, or use --report_to none")


def open_tracker(report_to, out_dir, config, start_step):
    """The tracker --report_to asks for; NoTracker for none (and on every rank but the master)."""
    if report_to == "tensorboard":
        return TensorBoardTracker(out_dir, config, start_step)
    if report_to == "wandb":
        return WandbTracker(out_dir, config, start_step)
    return NoTracker()
