"""infra/runs.py -- the run: its ranks, its directory; a run is never lost, survives kill -9 and can be watched live.

A training run lives in one folder, `--out_dir`, and this file owns it (infra/checkpoints.py what is inside a checkpoint):

    out_dir/
      log.jsonl              {"config": ...} first, then one record per step; appended, fsync'ed
      checkpoint-<step>/     model + tokenizer + image processor (save_pretrained: loadable with from_pretrained)
                             + state.pt (optimizer, scheduler, RNG, step) + manifest.json (each file's size and
                             hash, written last); the newest --keep_checkpoints of them
      checkpoint-<step>.tmp/ a save in progress (never read; removed by the next save)
      tensorboard/, wandb/   with --report_to tensorboard | wandb
      .lock                  held (flock) while a train.py writes here

The rules, and why each keeps a run safe:

  1. **A new run never overwrites an old one.** `out_dir` holds a run if it has a log.jsonl or a checkpoint;
     then train.py refuses unless it is told `--resume 1` (continue) or `--overwrite 1` (delete and restart).
     `--resume 1` without a complete checkpoint refuses too, and changes nothing on disk.
  2. **There is a complete checkpoint on disk at every instant** (infra/checkpoints.py: written under a .tmp name,
     renamed into place, the old ones deleted after).
  3. **Every step is logged exactly once.** A step's record is appended *before* its checkpoint is saved. A
     kill in between leaves a record of a step the checkpoint does not hold; resume rewrites the log
     (to a temp file, then an atomic rename) keeping only records of steps before the checkpoint's, and
     redoes the rest -- with the same numbers, because every random draw is restored or keyed by the step.
     A line torn by a kill in the middle of a write is dropped when the log is read.
  4. **Resuming runs no code from the checkpoint** (infra/checkpoints.py: state.pt loads with weights_only=True).
  5. **The tracker is optional and behind a no-op stand-in** (`NoTracker`): the loop calls tracker.log(rec)
     whatever --report_to says. TensorBoard and W&B get the keys of log.jsonl, at x = step + 1 (updates done,
     as TRL logs), so the held-out accuracy before RL sits at x = 0.
  6. **One process per rank**: `setup_distributed` starts torchrun's process group from its environment
     variables (train.py and eval.py share it); only rank 0 writes into out_dir.
  7. **A checkpoint is checked before anything is loaded from it** (infra/checkpoints.py: its manifest of sizes and
     hashes; a bad folder is skipped with one line, and the next newest tried).
  8. **A full disk stops the run with one line, losing nothing complete** (checkpoints.stop_if_write_fails
     guards every write into out_dir: checkpoints, the log, the tracker).
  9. **SIGTERM and SIGINT (preemption, Ctrl-C) stop after the step in flight**, with its record and a
     checkpoint, and exit with 128 + the signal (143, 130: what a shell reports for a process the signal
     ended, so schedulers see what they saw before, now with the step saved). Every rank all-reduces the
     flag at the same point of each step, so all stop after the same step. A second signal, a second or
     more after the first, exits at once (one within a second is the same request delivered twice: under
     torchrun a worker gets the terminal's or the scheduler's signal and the launcher's copy of it).
 10. **Under torchrun the ranks leave together, and nothing runs after the run is on disk.** Once the last
     checkpoint is saved, every rank meets at a barrier, destroys the process group and ends with os._exit
     (`leave`): no interpreter teardown, where gloo's worker threads can still hold tensors whose destruction
     needs the GIL of a dying interpreter (SIGABRT, pytorch/pytorch#179291). Signals are ignored from the
     barrier on (`Preemption.ignore`): when one rank exits 143 first, torchrun SIGTERMs the others, and for a
     rank that got the first signal that copy would count as a second one and kill it half way out.

kill -9 safety needs only the atomic renames (the page cache outlives the process); the fsyncs add safety
against a power cut. The test hooks (ATRL_TEST_HOOK) are described in infra/checkpoints.py.

References: TensorBoard's purge_step; nanoGPT/nanochat for the resume-from-checkpoint shape;
sysexits/bash for exit status 128 + signal;
torch.distributed.run (torchrun) forwards SIGTERM/SIGINT to its workers and SIGKILLs them --shutdown_timeout
(30) seconds later.

Use it (through train.py):
    python train.py --out_dir runs/a                  # a new run; stops with one line if runs/a holds one
    python train.py --out_dir runs/a --resume 1       # continue from the newest complete checkpoint
    python train.py --out_dir runs/a --overwrite 1 --report_to tensorboard   # then: tensorboard --logdir runs
Tests: OMP_NUM_THREADS=1 python -m pytest -q -s tests/test_runs.py   (-s prints what each injected kill did)
"""
import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import uuid

import torch

from infra import checkpoints  # what is inside checkpoint-<step>/: saved whole, checked before loading, rules 2, 4, 7, 8
from infra.cli import config_error, hub_shaped

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
    """Sum a tensor over ranks, in place; a no-op on one process. NOTE: nccl reduces CUDA tensors only, so a CPU
    tensor (the loop's counts, log sums and skip flag) makes the round trip through this rank's GPU."""
    import torch.distributed as dist

    if dist.is_initialized():
        if t.device.type != "cuda" and dist.get_backend() == "nccl":
            on_gpu = t.cuda()
            dist.all_reduce(on_gpu)
            t.copy_(on_gpu)
        else:
            dist.all_reduce(t)
    return t

def wrap_for_training(model, fsdp, device, local_rank):
    """The module the training forward and backward run through: FSDP2 (each decoder layer a unit, the root --
    vision tower, embeddings, head -- another) or DDP under torchrun, the model itself on one process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for layer in model.model.language_model.layers:
            fully_shard(layer)
        return fully_shard(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)


@contextlib.contextmanager
def gathered(train_model, synced):
    """Under FSDP2 (synced), generation calls the vision tower outside the root's forward: gather the root's
    parameters for the duration (decoder layers gather themselves in their own forward). A no-op otherwise."""
    if synced:
        train_model.unshard()
    try:
        yield
    finally:
        if synced:
            train_model.reshard()

# --------------------------------------------------------------------------------------------------
# The run directory: refuse, resume or overwrite
# --------------------------------------------------------------------------------------------------


def run_files(out_dir):
    """What in out_dir makes it hold a run: the log and checkpoint folders (also leftovers and the pre-issue-15
    single `checkpoint/`)."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if n == "log.jsonl" or n.startswith("checkpoint"))


def prepare_run_dir(prog, out_dir, resume, overwrite):
    """Decide what happens to out_dir before anything is written (read-only; every rank calls it).

    Returns (checkpoint path, state) when resuming, else (None, None). Stops with one line when a new run
    would overwrite an old one, or when --resume 1 finds nothing to resume.
    """
    if resume and overwrite:
        config_error(prog, "--resume 1 and --overwrite 1 contradict each other: pick one")
    found = run_files(out_dir)
    if resume:
        path, state, skipped = checkpoints.resume_point(out_dir)
        if path is None and found:
            why = f" ({'; '.join(skipped)})" if skipped else ""
            config_error(prog, f"--resume 1: --out_dir {out_dir!r} holds no complete checkpoint-<step>/ to resume from{why}; "
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
                checkpoints.remove(os.path.join(out_dir, name))
        for name in ("tensorboard", "wandb"):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        if os.path.exists(os.path.join(out_dir, "log.jsonl")):
            os.remove(os.path.join(out_dir, "log.jsonl"))
    return lock

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
    temp file and renamed, so a kill here (or a full disk: rule 8) leaves the old log intact."""
    old = read_log(path)[1:] if start_step and os.path.exists(path) else []
    kept = [r for r in old if r.get("step", math.inf) < start_step]
    logged = {r["step"] for r in kept if r.get("step", -1) >= 0}
    if len(logged) != start_step:  # only if the log was deleted or edited by hand: say so, carry on
        print(f"note: {path} holds records of {len(logged)} of the {start_step} steps before the checkpoint", flush=True)
    with checkpoints.stop_if_write_fails(os.path.dirname(path), path, cleanup=lambda: checkpoints.remove(path + ".tmp")):
        with open(path + ".tmp", "w") as f:
            for rec in [header, *kept]:
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    return kept


def append_log(path, record):
    """Append one record as a line, on disk before this returns. A write that fails (a full disk) cuts the file
    back to where it was, so that the log holds whole records only, and stops the run (rule 8)."""
    data, step = (json.dumps(record) + "\n").encode(), record.get("step")
    with checkpoints.stop_if_write_fails(os.path.dirname(path), path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.environ.get("ATRL_TEST_HOOK") in (f"log_torn:{step}", f"log_torn:{step}:full"):
                    os.write(fd, data[:len(data) // 2])  # test hook: a kill (or a full disk) in the middle of the write
                    checkpoints.fault_hook("log_torn", step)
                while data:  # a short write happens when the disk fills up half way; the next one raises ENOSPC
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # NOTE: a record is in the log whole or not at all
                raise
        finally:
            os.close(fd)

# --------------------------------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT stop the run after the step in flight, with its checkpoint (rule 9)
# --------------------------------------------------------------------------------------------------


class Preemption:
    """Catches SIGTERM and SIGINT from its creation on; the loop asks `requested(device)` once per step, on every
    rank at the same point, and stops after that step when any rank got a signal. A second signal, more than
    `repeat_s` seconds after the first, ends the process at once (the signal's own default action)."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), repeat_s=1.0):
        self.signum, self.first, self.repeat_s = 0, 0.0, repeat_s
        for s in signals:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        # os.write, not print: a handler can run while the main thread is inside print (a re-entrant call fails)
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum, self.first = signum, time.monotonic()
            os.write(2, f"\n{checkpoints.PROG}: {name}: finishing this step, then saving a checkpoint and stopping "
                        f"(send it again to stop at once)\n".encode())
        elif time.monotonic() - self.first > self.repeat_s:
            os.write(2, f"\n{checkpoints.PROG}: a second signal ({name}): stopping at once, without saving this step\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # dies of the signal itself: exit status 128 + signum, no cleanup (kill -9 safe)

    def ignore(self):
        """From here on signals change nothing: the run is saved and the process is leaving (rule 10)."""
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)

    def requested(self, device):
        """The signal any rank got (the largest number if several), 0 if none: one tiny all-reduce, so that every
        rank must call it at the same point of the loop, and all then agree on the step after which to stop."""
        import torch.distributed as dist

        flag = torch.tensor([self.signum], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def leave(code):
    """End this rank now with exit status `code`, its output flushed; no atexit handlers, no interpreter teardown
    (rule 10). Call it only when everything the run writes is written and closed, and the process group is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stopped_line(signum, step, out_dir):
    """The last line of a run a signal stopped after `step` (its checkpoint is step + 1)."""
    return (f"{checkpoints.PROG}: stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is "
            f"{os.path.join(out_dir, f'checkpoint-{step + 1}')}; continue with --resume 1")


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

        self.folder = os.path.join(out_dir, "tensorboard")
        self.writer = SummaryWriter(self.folder, purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))
        # TensorBoard writes on a thread of its own. A write that fails there (a full disk) is raised again here
        # by the next log or close, which stops the run in one line (rule 8): the thread's traceback is not printed
        previous = threading.excepthook

        def quiet_write_faults(args):
            if not (type(args.thread).__name__ == "_AsyncWriterThread" and checkpoints.write_errno(args.exc_value) in checkpoints.WRITE_FAULTS):
                previous(args)
        threading.excepthook = quiet_write_faults

    def log(self, record):
        with checkpoints.stop_if_write_fails(os.path.dirname(self.folder), self.folder):
            for key, value in _scalars(record).items():
                self.writer.add_scalar(key, value, record["step"] + 1)
            self.writer.flush()

    def close(self):
        with checkpoints.stop_if_write_fails(os.path.dirname(self.folder), self.folder):
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
    folder gets its newest checkpoint suggested. (Here, not in infra/cli.py, which this file imports: no circle.)"""
    if not value:
        return
    if os.path.isdir(value):
        if not os.path.exists(os.path.join(value, "config.json")):
            newest = checkpoints.newest_checkpoint_name(value)
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
