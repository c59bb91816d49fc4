"""runs.py -- the run: its ranks, its directory; a run is never lost, survives kill -9 and can be watched live.

A training run lives in one folder, `--out_dir`, and this file owns everything that goes into it:

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
  2. **There is a complete checkpoint on disk at every instant** (once the first save has finished):
         write checkpoint-<s>.tmp/ -> fsync -> rename to checkpoint-<s>/ (atomic) -> delete the old ones
     An old checkpoint is first renamed aside (checkpoint-<s>.deleting, atomic), then removed, so a
     half-deleted folder never carries a checkpoint's name.
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
  7. **A checkpoint is checked before anything is loaded from it.** Its manifest.json (every file's size and
     sha256, written into the .tmp folder last, so it exists from the instant the checkpoint does) is
     verified on resume: sizes first, then hashes, then state.pt must load. A folder that fails (truncated,
     a flipped bit, half copied) is skipped with one line and the next newest is tried; none left: one
     line naming the bad file. Folders without a manifest (written before checkpoints carried one) are
     checked for presence and length only (safetensors headers give the length), and a line says so.
  8. **A full disk stops the run with one line, losing nothing complete.** A write that fails with ENOSPC
     (or EDQUOT, EROFS, EIO) removes what it left half-written (the .tmp folder, the torn log record) and
     stops: where it failed, the newest complete checkpoint, `--resume 1` once there is space. Rule 2
     means no complete checkpoint was deleted before.
  9. **SIGTERM and SIGINT (preemption, Ctrl-C) stop after the step in flight**, with its record and a
     checkpoint, and exit with 128 + the signal (143, 130: what a shell reports for a process the signal
     ended, so schedulers see what they saw before, now with the step saved). Every rank all-reduces the
     flag at the same point of each step, so all stop after the same step. A second signal, a second or
     more after the first, exits at once (one within a second is the same request delivered twice: under
     torchrun a worker gets the terminal's or the scheduler's signal and the launcher's copy of it).

kill -9 safety needs only the atomic renames (the page cache outlives the process); the fsyncs add safety
against a power cut. Fault hook for tests: ATRL_TEST_HOOK=<point>:<step> makes the process SIGKILL itself at
<point> while saving / logging <step>, and ATRL_TEST_HOOK=<point>:<step>:full raises OSError(ENOSPC) there
instead, as a full disk would; points: checkpoint_model_written (weights written, state not yet),
checkpoint_written (temp dir complete, not renamed), checkpoint_renamed (new one in place, old not yet
deleted), checkpoint_pruning (an old one renamed aside, not yet deleted), log_torn (half a record written).

References: HF Trainer's checkpoint-<step>/ layout and save_total_limit; torch.load(weights_only=True)
(PyTorch >= 2.6 default); TensorBoard's purge_step; nanoGPT/nanochat for the resume-from-checkpoint shape;
BitTorrent's piece hashes for hashing a file in parallel pieces; sysexits/bash for exit status 128 + signal;
torch.distributed.run (torchrun) forwards SIGTERM/SIGINT to its workers and SIGKILLs them --shutdown_timeout
(30) seconds later.

Use it (through train.py):
    python train.py --out_dir runs/a                  # a new run; stops with one line if runs/a holds one
    python train.py --out_dir runs/a --resume 1       # continue from the newest complete checkpoint
    python train.py --out_dir runs/a --overwrite 1 --report_to tensorboard   # then: tensorboard --logdir runs
Tests: OMP_NUM_THREADS=1 python -m pytest -q -s tests/test_runs.py   (-s prints what each injected kill did)
"""
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import threading
import time
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
    """(path, state, skipped): the newest usable checkpoint-<step>/ in out_dir and its state.pt, or (None, None,
    skipped); `skipped` says why each newer folder was passed over ("checkpoint-8: state.pt has ...").

    Usable: config.json, the weights and state.pt are there, every file matches the manifest (checkpoint_problem)
    and state.pt loads with its step. Each folder that fails is skipped with one line, and the next is tried.
    """
    skipped, steps = [], checkpoint_steps(out_dir)
    for step in steps:
        path = os.path.join(out_dir, f"checkpoint-{step}")
        weights = any(os.path.exists(os.path.join(path, n)) for n in ("model.safetensors", "model.safetensors.index.json"))
        missing = [n for n in ("config.json", "state.pt") if not os.path.exists(os.path.join(path, n))]
        problem = f"it has no {', '.join(missing + ([] if weights else ['model weights']))}" if missing or not weights else ""
        problem = problem or checkpoint_problem(path)
        if not problem:
            try:
                state = load_state(path)
                if not (isinstance(state, dict) and state.get("step") == step):
                    problem = f"state.pt is not the state of step {step}"
            except pickle.UnpicklingError:  # weights_only refused an object: unpickling it could run code
                problem = "state.pt holds more than tensors and plain values (not loaded: it could run code)"
            except Exception as err:  # truncated or not a torch file
                problem = f"state.pt does not load ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        if not problem:
            return path, state, skipped
        print(f"{path}: skipped, {problem}" + ("; trying the next newest" if step != steps[-1] else ""))
        skipped.append(f"checkpoint-{step}: {problem}")
    return None, None, skipped


def resume_point(out_dir):
    """latest_checkpoint, checked by rank 0 alone under torchrun (hashing a 40 GB checkpoint once, not once per
    rank): the others take its choice by broadcast and load that state.pt themselves."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return latest_checkpoint(out_dir)
    path, state, skipped = latest_checkpoint(out_dir) if dist.get_rank() == 0 else (None, None, None)
    choice = [path, skipped]
    dist.broadcast_object_list(choice, src=0)
    path, skipped = choice
    if dist.get_rank() != 0 and path:
        state = load_state(path)
    return path, state, skipped


def prepare_run_dir(prog, out_dir, resume, overwrite):
    """Decide what happens to out_dir before anything is written (read-only; every rank calls it).

    Returns (checkpoint path, state) when resuming, else (None, None). Stops with one line when a new run
    would overwrite an old one, or when --resume 1 finds nothing to resume.
    """
    if resume and overwrite:
        config_error(prog, "--resume 1 and --overwrite 1 contradict each other: pick one")
    found = run_files(out_dir)
    if resume:
        path, state, skipped = resume_point(out_dir)
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
                _remove(os.path.join(out_dir, name))
        for name in ("tensorboard", "wandb"):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        if os.path.exists(os.path.join(out_dir, "log.jsonl")):
            os.remove(os.path.join(out_dir, "log.jsonl"))
    return lock

# --------------------------------------------------------------------------------------------------
# Checkpoints: write new, rename into place, delete old
# --------------------------------------------------------------------------------------------------


PROG = "train.py"  # the program that writes runs: its one-line errors begin with its name
# errno of a write that failed -> what the user can do about it (every other error passes through unchanged)
WRITE_FAULTS = {errno.ENOSPC: "free space", errno.EDQUOT: "free space or raise the quota",
                errno.EROFS: "make the file system writable", errno.EIO: "check the disk"}
MANIFEST = "manifest.json"
PIECE_BYTES = 64 << 20  # files are hashed in pieces of 64 MiB, on several threads at once (file_digests)


def fault_hook(point, step):
    """Test hook, ATRL_TEST_HOOK: `<point>:<step>` kills this process (SIGKILL: no cleanup, like kill -9);
    `<point>:<step>:full` raises OSError(ENOSPC) instead, as a full disk would."""
    hook = os.environ.get("ATRL_TEST_HOOK")
    if hook == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if hook == f"{point}:{step}:full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_errno(err):
    """The errno behind a failed write, or None. Python's own writes raise OSError; torch.save into a Python file
    raises RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos ...") whose __context__ is
    that OSError; safetensors (Rust) raises SafetensorError("... No space left on device (os error 28)").

    >>> write_errno(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    28
    >>> write_errno(ValueError("not a write")) is None
    True
    """
    while err is not None:
        if isinstance(err, OSError) and err.errno:
            return err.errno
        found = re.search(r"\(os error (\d+)\)", str(err))
        if found:
            return int(found.group(1))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def stop_if_write_fails(out_dir, path, cleanup=None):
    """Run writes into out_dir. If one fails for want of space (or of a working disk: WRITE_FAULTS), call
    cleanup() (remove what was half written, freeing its space) and stop with one line: what failed where, the
    newest complete checkpoint and how to continue. Other errors pass through unchanged."""
    try:
        yield
    except Exception as err:
        code = write_errno(err)
        if code not in WRITE_FAULTS:
            raise
        if cleanup:
            cleanup()
        newest = newest_checkpoint_name(out_dir)
        then = (f"the newest complete checkpoint is {os.path.join(out_dir, newest)} (step {_checkpoint_step(newest)}); "
                f"{WRITE_FAULTS[code]}, then continue with --resume 1" if newest else
                f"no checkpoint was complete yet; {WRITE_FAULTS[code]}, then start again with --overwrite 1")
        raise SystemExit(f"{PROG}: error: {os.strerror(code).lower()} while writing {path}; {then}") from None


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
        fault_hook("checkpoint_pruning", step)
        shutil.rmtree(aside, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _files(folder):
    """Paths of the files under folder, relative to it, sorted; the manifest itself left out."""
    names = [os.path.relpath(os.path.join(root, n), folder) for root, _, files in os.walk(folder) for n in files]
    return sorted(n for n in names if n != MANIFEST)


def _piece_digest(path, offset):
    """sha256 of the piece of `path` at `offset`, read 1 MiB at a time (one 64 MiB read would allocate and fault in
    fresh memory for every piece: half the speed, measured)."""
    h, left = hashlib.sha256(), PIECE_BYTES
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while left and (chunk := f.read(min(left, 1 << 20))):
            h.update(chunk)
            left -= len(chunk)
    return h.digest()


def file_digests(folder, names):
    """{name: hex digest} for files under folder: sha256 of the concatenated sha256 digests of the file's 64 MiB
    pieces (a hash list, as BitTorrent's pieces), hashed on up to 8 threads (hashlib releases the GIL). Why:
    sha256 runs at ~1.3 GB/s on one core (bench/checksum.py), so one thread would take ~30 s per save and per
    resume for a 3B checkpoint with its AdamW state (~40 GB); pieces let 8 cores share the work."""
    jobs = [(name, offset) for name in names                                       # every file has >= 1 piece
            for offset in range(0, max(os.path.getsize(os.path.join(folder, name)), 1), PIECE_BYTES)]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        pieces = list(pool.map(lambda job: _piece_digest(os.path.join(folder, job[0]), job[1]), jobs))
    digests = {}
    for (name, _), piece in zip(jobs, pieces):  # in file order, pieces in offset order
        digests.setdefault(name, hashlib.sha256()).update(piece)
    return {name: h.hexdigest() for name, h in digests.items()}


def write_manifest(folder, step):
    """folder/manifest.json: the step, and every other file's size and digest (file_digests)."""
    names = _files(folder)
    digests = file_digests(folder, names)
    files = {n: {"bytes": os.path.getsize(os.path.join(folder, n)), "sha256": digests[n]} for n in names}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"step": step, "hash": f"sha256 of the sha256 of each {PIECE_BYTES >> 20} MiB piece",
                   "files": files}, f, indent=1)


def _safetensors_problem(path):
    """'' if a .safetensors file is as long as its header says (8 bytes of length, a JSON header, then the
    tensors' bytes up to the largest data_offsets end), else what is wrong: how a truncation shows."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        try:
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
            end = 8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, AttributeError):
            return f"{os.path.basename(path)} has no readable safetensors header"
    return "" if size == end else f"{os.path.basename(path)} has {size:,} bytes where its header says {end:,} (truncated?)"


def checkpoint_problem(path):
    """Why the checkpoint folder `path` must not be loaded, or '' if it may: a file of its manifest is missing,
    has another size (truncated, half copied) or another digest (a flipped bit, a bad copy). Sizes are checked
    for every file first (cheap), then the digests (reads everything once). A folder without a manifest
    (written before checkpoints carried one) gets a line saying so and the length checks its safetensors
    headers allow; a flipped bit in it cannot be seen."""
    if not os.path.exists(os.path.join(path, MANIFEST)):
        print(f"{path}: has no {MANIFEST} (written before checkpoints carried one): checking file lengths only")
        return next(filter(None, (_safetensors_problem(os.path.join(path, n)) for n in _files(path)
                                  if n.endswith(".safetensors"))), "")
    try:
        files = json.load(open(os.path.join(path, MANIFEST)))["files"]
        sizes = {name: int(entry["bytes"]) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is not a manifest (cut off?)"
    for name, size in sizes.items():
        if not os.path.isfile(os.path.join(path, name)):
            return f"{name} is missing (its manifest lists it)"
        if os.path.getsize(os.path.join(path, name)) != size:
            return (f"{name} has {os.path.getsize(os.path.join(path, name)):,} bytes where its manifest says "
                    f"{size:,} (truncated or half copied)")
    digests = file_digests(path, list(files))
    for name in files:
        if digests[name] != files[name]["sha256"]:
            return f"{name} does not match the sha256 in its manifest (a flipped bit or a bad copy)"
    return ""


def save_checkpoint(out_dir, step, write_model, state, keep):
    """out_dir/checkpoint-<step>/: write_model(folder) writes the from_pretrained files, then state.pt, then the
    manifest; written under a .tmp name, fsync'ed, renamed into place; then all but the newest `keep`
    checkpoints are removed. A write that fails for want of space removes the .tmp folder and stops (rule 8)."""
    final = os.path.join(out_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    with stop_if_write_fails(out_dir, tmp, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        os.makedirs(tmp)
        write_model(tmp)
        fault_hook("checkpoint_model_written", step)
        with open(os.path.join(tmp, "state.pt"), "wb") as f:  # a Python file: a failed write keeps its errno (write_errno)
            torch.save(state, f)
        write_manifest(tmp, step)  # last: a folder with a manifest holds everything the manifest lists
        for name in _files(tmp) + [MANIFEST]:
            _fsync(os.path.join(tmp, name))
        _fsync(tmp)
        fault_hook("checkpoint_written", step)
        if os.path.exists(final):  # only an unusable one can be here (resume skipped it): an older one stays meanwhile
            _remove(final)
        os.replace(tmp, final)  # NOTE: the instant the new checkpoint exists; everything before left the old intact
        _fsync(out_dir)
    fault_hook("checkpoint_renamed", step)
    steps = checkpoint_steps(out_dir)
    # newer ones than this are those resume skipped as unusable: they go, so that they never count among `keep`
    for old in [s for s in steps if s > step] + [s for s in steps if s <= step][keep:]:
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
    temp file and renamed, so a kill here (or a full disk: rule 8) leaves the old log intact."""
    old = read_log(path)[1:] if start_step and os.path.exists(path) else []
    kept = [r for r in old if r.get("step", math.inf) < start_step]
    with stop_if_write_fails(os.path.dirname(path), path, cleanup=lambda: _remove(path + ".tmp")):
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
    with stop_if_write_fails(os.path.dirname(path), path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.environ.get("ATRL_TEST_HOOK") in (f"log_torn:{step}", f"log_torn:{step}:full"):
                    os.write(fd, data[:len(data) // 2])  # test hook: a kill (or a full disk) in the middle of the write
                    fault_hook("log_torn", step)
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
            os.write(2, f"\n{PROG}: {name}: finishing this step, then saving a checkpoint and stopping "
                        f"(send it again to stop at once)\n".encode())
        elif time.monotonic() - self.first > self.repeat_s:
            os.write(2, f"\n{PROG}: a second signal ({name}): stopping at once, without saving this step\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # dies of the signal itself: exit status 128 + signum, no cleanup (kill -9 safe)

    def requested(self, device):
        """The signal any rank got (the largest number if several), 0 if none: one tiny all-reduce, so that every
        rank must call it at the same point of the loop, and all then agree on the step after which to stop."""
        import torch.distributed as dist

        flag = torch.tensor([self.signum], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def stopped_line(signum, step, out_dir):
    """The last line of a run a signal stopped after `step` (its checkpoint is step + 1)."""
    return (f"{PROG}: stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is "
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
            if not (type(args.thread).__name__ == "_AsyncWriterThread" and write_errno(args.exc_value) in WRITE_FAULTS):
                previous(args)
        threading.excepthook = quiet_write_faults

    def log(self, record):
        with stop_if_write_fails(os.path.dirname(self.folder), self.folder):
            for key, value in _scalars(record).items():
                self.writer.add_scalar(key, value, record["step"] + 1)
            self.writer.flush()

    def close(self):
        with stop_if_write_fails(os.path.dirname(self.folder), self.folder):
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
