"""infra/checkpoints.py -- a checkpoint on disk is whole or absent, checked before it is loaded, and saved even when the disk fills.

A run's checkpoints are folders in its out_dir (infra/runs.py owns the folder; this file owns what is in them):

    checkpoint-<step>/       model + tokenizer + image processor (save_pretrained: loadable with from_pretrained)
                             + state.pt (optimizer, scheduler, RNG, step) + manifest.json (each file's size and hash,
                             written last); the newest --keep_checkpoints of them
    checkpoint-<step>.tmp/   a save in progress (never read; removed by the next save)
    checkpoint-<step>.deleting/  an old one on its way out (never read)

The rules (their numbers are those of infra/runs.py's list, which holds the others):

  2. **There is a complete checkpoint on disk at every instant** (once the first save has finished):
         write checkpoint-<s>.tmp/ -> fsync -> rename to checkpoint-<s>/ (atomic) -> delete the old ones
     An old checkpoint is first renamed aside (checkpoint-<s>.deleting, atomic), then removed, so a
     half-deleted folder never carries a checkpoint's name.
  4. **Resuming runs no code from the checkpoint.** state.pt loads with torch.load(weights_only=True):
     it holds tensors, numbers, strings, lists and dicts only (the RNG states are converted to those).
  7. **A checkpoint is checked before anything is loaded from it.** Its manifest.json (every file's size and
     sha256, written into the .tmp folder last, so it exists from the instant the checkpoint does) is
     verified on resume: sizes first, then hashes, then state.pt must load. A folder that fails (truncated,
     a flipped bit, half copied) is skipped with one line and the next newest is tried; none left: one
     line naming the bad file. Folders without a manifest (written before checkpoints carried one) are
     checked for presence and length only (safetensors headers give the length), and a line says so.
  8. **A full disk stops the run with one line, losing nothing complete.** A write that fails with ENOSPC
     (or EDQUOT, EROFS, EIO) removes what it left half-written (the .tmp folder; infra/runs.py's log cuts a torn
     record) and stops: where it failed, the newest complete checkpoint, `--resume 1` once there is space.
     Rule 2 means no complete checkpoint was deleted before.

kill -9 safety needs only the atomic renames (the page cache outlives the process); the fsyncs add safety
against a power cut. Fault hook for tests: ATRL_TEST_HOOK=<point>:<step> makes the process SIGKILL itself at
<point> while saving / logging <step>, and ATRL_TEST_HOOK=<point>:<step>:full raises OSError(ENOSPC) there
instead, as a full disk would; points: checkpoint_model_written (weights written, state not yet),
checkpoint_written (temp dir complete, not renamed), checkpoint_renamed (new one in place, old not yet
deleted), checkpoint_pruning (an old one renamed aside, not yet deleted), log_torn (half a record written).

References: HF Trainer's checkpoint-<step>/ layout and save_total_limit; torch.load(weights_only=True)
(PyTorch >= 2.6 default); BitTorrent's piece hashes for hashing a file in parallel pieces.

Use it through train.py (infra/runs.py's commands); what hashing costs: `python bench/checksum.py`.
Tests: OMP_NUM_THREADS=1 python -m pytest -q tests/test_runs.py tests/test_faults.py
"""
import concurrent.futures
import contextlib
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal

import numpy as np
import torch

# --------------------------------------------------------------------------------------------------
# Which checkpoint: the newest one that is whole
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


# --------------------------------------------------------------------------------------------------
# Saving: write new, rename into place, delete old; a write that fails for want of space stops in one line
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


def remove(path, step=None):
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
            remove(final)
        os.replace(tmp, final)  # NOTE: the instant the new checkpoint exists; everything before left the old intact
        _fsync(out_dir)
    fault_hook("checkpoint_renamed", step)
    steps = checkpoint_steps(out_dir)
    # newer ones than this are those resume skipped as unusable: they go, so that they never count among `keep`
    for old in [s for s in steps if s > step] + [s for s in steps if s <= step][keep:]:
        remove(os.path.join(out_dir, f"checkpoint-{old}"), step)
    for name in os.listdir(out_dir):  # leftovers of killed saves and deletions
        if name.startswith("checkpoint-") and name.endswith((".tmp", ".deleting")):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def training_state(model, optimizer, sharded=False):
    """(model state dict or None, optimizer state dict) to save. None: save_pretrained takes the model's own.

    sharded (FSDP2): every rank gathers the full tensors, offloaded to the CPU (a collective: all ranks call it).
    The tied weights (lm_head = embeddings) come back as two copies; one name is kept, as save_pretrained does."""
    if not sharded:
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=full)
    unique = {name for name, _ in model.named_parameters()}
    every = dict(model.named_parameters(remove_duplicate=False))
    model_state = {k: v for k, v in model_state.items() if k in unique or k not in every}
    return model_state, get_optimizer_state_dict(model, optimizer, options=full)


def restore(state, model, optimizer, scheduler, sharded=False):
    """Put a loaded state.pt back: optimizer (under FSDP2 each rank keeps its shard of the saved full state),
    scheduler and every RNG; returns the step to continue from. The weights came with the model's own load."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["step"]


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
