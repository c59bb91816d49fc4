"""Faults a long run meets -- a full disk, preemption, a corrupt checkpoint -- each end with one clear line, lose
no completed step beyond the one in flight, and resuming afterwards gives the run that never met them.

Each fault is made for real or injected where it happens: OSError(ENOSPC) in the middle of a checkpoint save and
of a log line (ATRL_TEST_HOOK=<point>:<step>:full, checkpoints.fault_hook) and, where user namespaces allow mounting
one, a real tmpfs that fills up; a real SIGTERM to train.py, to one rank of a 2-process torchrun run, and a
second signal; a truncated model.safetensors and a flipped bit in state.pt (one that torch.load does not
notice). After each, `--resume 1` must give log records equal, in every key but time_*, to an uninterrupted run.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_faults.py
"""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from test_runs import logged_steps, snapshot, start_train, stderr_tail, strip_times, train_env
from test_train import REPO, SMALL, records, run_train, weights

from infra import checkpoints
from conftest import torchrun_command

STEPS = ["--steps", "6", "--save_every", "1", "--keep_checkpoints", "2"]


@pytest.fixture(scope="module")
def straight(warm_checkpoint, tmp_path_factory):
    """The uninterrupted run every faulty one must equal (--save_every and --keep_checkpoints change no number)."""
    out = tmp_path_factory.mktemp("straight")
    run_train(warm_checkpoint, out, *STEPS)
    return out


def train(ckpt, out_dir, *args, hook=None):
    """train.py to its end (or its fault), ATRL_TEST_HOOK=hook; the finished process (stdout, stderr captured)."""
    return subprocess.run([sys.executable, "train.py", "--model", ckpt, "--out_dir", str(out_dir), *SMALL, *args],
                          cwd=REPO, env=train_env(hook), capture_output=True, text=True, timeout=600)


def last_line(text):
    return text.strip().splitlines()[-1]


def assert_one_clear_line(proc, line):
    """The process failed and its last line is `line`, with no traceback and no exception ignored at exit (as the
    probe's cleanup printed when a fault ended the run) anywhere in its output."""
    assert proc.returncode != 0 and last_line(proc.stderr) == line, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


def checkpoint_names(out_dir):
    return sorted(n for n in os.listdir(out_dir) if n.startswith("checkpoint"))


def assert_same_run(straight, out):
    assert strip_times(records(straight)) == strip_times(records(out))  # rewards, losses, grad norms, lr, eval
    wa, wb = weights(straight), weights(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"

# --------------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------------


def test_a_full_disk_stops_with_one_line_and_resume_gives_the_uninterrupted_run(warm_checkpoint, straight, tmp_path):
    out = tmp_path / "run"
    # the disk fills up while checkpoint-3 is written (its weights are in checkpoint-3.tmp/, state.pt is not)
    proc = train(warm_checkpoint, out, *STEPS, hook="checkpoint_model_written:3:full")
    assert_one_clear_line(proc, f"train.py: error: no space left on device while writing {out}/checkpoint-3.tmp; the "
                                f"newest complete checkpoint is {out}/checkpoint-2 (step 2); free space, then continue "
                                "with --resume 1")
    assert proc.returncode == 1 and checkpoint_names(out) == ["checkpoint-1", "checkpoint-2"]  # the partial one removed
    assert logged_steps(out) == [0, 1, 2]

    # resumed, the disk fills up half way through step 4's record: the log is cut back to whole records
    proc = train(warm_checkpoint, out, *STEPS, "--resume", "1", hook="log_torn:4:full")
    assert_one_clear_line(proc, f"train.py: error: no space left on device while writing {out}/log.jsonl; the newest "
                                f"complete checkpoint is {out}/checkpoint-4 (step 4); free space, then continue with "
                                "--resume 1")
    assert logged_steps(out) == [0, 1, 2, 3] and open(out / "log.jsonl").read().endswith("}\n")

    proc = train(warm_checkpoint, out, *STEPS, "--resume", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(straight, out)


def test_a_probe_entered_by_hand_and_never_exited_is_quiet_when_the_process_ends(random_checkpoint):
    """As train.py holds it (__enter__ once, for the whole run): an exit that skips the cleanup, such as a full disk's
    SystemExit, leaves the generator to interpreter teardown, which must not print an ignored exception."""
    script = f"""if 1:
        import torch, connectivity
        from transformers import Qwen2_5_VLForConditionalGeneration
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained({random_checkpoint!r}, attn_implementation="sdpa")
        context = connectivity.probe(model, background=True)
        context.__enter__()
        raise SystemExit("stopped")
    """
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert_one_clear_line(proc, "stopped")


def test_a_full_disk_under_tensorboard_is_one_line_too(tmp_path):
    """TensorBoard writes its events on a thread of its own: a full disk there must not print that thread's
    traceback besides the one line (the run's own writes are injected with ATRL_TEST_HOOK; this one by hand)."""
    pytest.importorskip("tensorboard", reason="tensorboard is in requirements.txt; --report_to tensorboard needs it")
    script = f"""if 1:
        import errno, os
        from infra import runs
        from tensorboard.summary.writer import record_writer
        tracker = runs.TensorBoardTracker({str(tmp_path)!r}, {{}}, 0)
        tracker.log({{"step": 0, "reward": 1.0}})
        def full(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        record_writer.RecordWriter.write = full  # the disk is full from here on
        tracker.log({{"step": 1, "reward": 0.5}})
    """
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_clear_line(proc, f"train.py: error: no space left on device while writing {tmp_path}/tensorboard; no "
                                "checkpoint was complete yet; free space, then start again with --overwrite 1")


def tmpfs_works():
    """Whether this machine lets an unprivileged user mount a tmpfs in a user + mount namespace."""
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not tmpfs_works(), reason="needs `unshare -r -m` (user namespaces) to mount a small tmpfs")
def test_a_real_full_disk_with_the_tracker_on_ends_in_one_line(warm_checkpoint, straight, tmp_path):
    """out_dir on a 22 MiB tmpfs: checkpoints of ~9 MiB, --keep_checkpoints 2, so the third save runs out of space
    (in state.pt, written by torch.save: the error torch raises is not an OSError, checkpoints.write_errno finds it)."""
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    cmd = [sys.executable, "train.py", "--model", warm_checkpoint, "--out_dir", str(disk / "run"), *SMALL, *STEPS,
           "--report_to", "tensorboard"]
    # the tmpfs lives as long as the namespace: copy the run out of it before it goes ("free space")
    script = f"mount -t tmpfs -o size=22m tmpfs {disk} && {shlex.join(cmd)}; rc=$?; cp -a {disk / 'run'} {copy}; exit $rc"
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert_one_clear_line(proc, f"train.py: error: no space left on device while writing {disk}/run/checkpoint-3.tmp; "
                                f"the newest complete checkpoint is {disk}/run/checkpoint-2 (step 2); free space, then "
                                "continue with --resume 1")
    assert checkpoint_names(copy) == ["checkpoint-1", "checkpoint-2"] and logged_steps(copy) == [0, 1, 2]
    proc = train(warm_checkpoint, copy, *STEPS, "--resume", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(straight, copy)

# --------------------------------------------------------------------------------------------------
# Preemption: SIGTERM, SIGINT
# --------------------------------------------------------------------------------------------------


def test_sigterm_finishes_the_step_saves_it_and_resume_repeats_nothing(warm_checkpoint, straight, tmp_path):
    out = tmp_path / "run"
    proc = start_train(warm_checkpoint, out, "--steps", "6", "--save_every", "100")  # no checkpoint before the end
    while proc.poll() is None and len(logged_steps(out)) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM, stderr_tail(out)  # 143 from exit(), not killed (-15)
    last = logged_steps(out)[-1]
    assert logged_steps(out) == list(range(last + 1)) and 1 <= last < 5
    assert checkpoint_names(out) == [f"checkpoint-{last + 1}"]  # the step in flight was finished and saved
    assert last_line(stderr_tail(out)) == (f"train.py: stopped by SIGTERM after step {last}; its checkpoint is "
                                           f"{out}/checkpoint-{last + 1}; continue with --resume 1")
    assert "Traceback" not in stderr_tail(out)
    before = records(out)
    proc = train(warm_checkpoint, out, "--steps", "6", "--save_every", "100", "--resume", "1")
    assert proc.returncode == 0 and f"resumed from {out}/checkpoint-{last + 1} at step {last + 1}" in proc.stdout
    assert records(out)[:last + 1] == before  # times included: no step before the stop was done again
    assert_same_run(straight, out)


def test_a_second_signal_stops_at_once_and_a_copy_within_a_second_does_not():
    script = """if 1:
        import os, signal, time, torch
        from infra import runs
        stop = runs.Preemption()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested(torch.device("cpu")) == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # within a second: the launcher's copy of the same request
        print("still running", flush=True)
        time.sleep(1.2)
        os.kill(os.getpid(), signal.SIGTERM)  # a second request: the process ends here
        time.sleep(10)
        print("not stopped")
    """
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGTERM and proc.stdout == "still running\n", proc.stderr
    assert "train.py: a second signal (SIGTERM): stopping at once" in proc.stderr and time.perf_counter() - t < 10


def children(pid):
    """{RANK: pid} of the processes whose parent is `pid` (torchrun's workers)."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                env = dict(v.split("=", 1) for v in open(f"/proc/{entry}/environ").read().split("\0") if "=" in v)
                out[int(env.get("RANK", -1))] = int(entry)
        except OSError:  # gone meanwhile
            pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers in /proc")
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_after_the_same_step(warm_checkpoint, tmp_path):
    """Only rank 1 gets SIGTERM; rank 0, which writes the log and the checkpoints, learns of it through the
    per-step all-reduce. Had the ranks stopped after different steps, the one going on would wait in a collective
    for a rank that has left, and no checkpoint of the stop would be written. (Resuming a torchrun run exactly
    is test_train's test_fsdp_resume_continues_exactly.)"""
    out, err = tmp_path / "run", open(tmp_path / "run.err", "w")
    proc = subprocess.Popen([*torchrun_command(2), "train.py", "--model", warm_checkpoint, "--out_dir", str(out),
                             *SMALL, "--steps", "6", "--save_every", "100", "--micro_batch_size", "2"], cwd=REPO,
                            env=train_env(), stdout=subprocess.DEVNULL, stderr=err)
    while proc.poll() is None and len(logged_steps(out)) < 2:
        time.sleep(0.02)
    os.kill(children(proc.pid)[1], signal.SIGTERM)
    proc.wait(timeout=300)
    stderr = open(tmp_path / "run.err").read()
    last = logged_steps(out)[-1]
    assert logged_steps(out) == list(range(last + 1)) and last < 5, stderr[-3000:]
    assert checkpoint_names(out) == [f"checkpoint-{last + 1}"], stderr[-3000:]  # rank 0 stopped after the same step
    assert f"train.py: stopped by SIGTERM after step {last}; its checkpoint is {out}/checkpoint-{last + 1}" in stderr
    # torchrun's report: every rank ended by exit(143), none killed by a signal -- neither by the test's (rank 1
    # finishes its step) nor by the SIGTERM torchrun sends the others once one rank has exited 143 (infra/runs.py,
    # rule 10; before it, rank 1 took that copy for a second signal and died of it: "exitcode : -15")
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", stderr)
    assert codes and set(codes) == {"143"} and "received by PID" not in stderr, stderr[-3000:]
    # no traceback through the project's files (torchrun's report of a stop has its own, from its package, which
    # may sit under REPO too: CI's venv is REPO/.venv)
    assert not re.search(rf'File "{re.escape(REPO)}/[^/"]+\.py"', stderr), stderr[-3000:]
    assert checkpoints.latest_checkpoint(str(out))[1]["step"] == last + 1

# --------------------------------------------------------------------------------------------------
# A corrupt checkpoint
# --------------------------------------------------------------------------------------------------


def flip_a_bit_in_a_tensor(state_pt):
    """Flip one bit in the middle of state.pt's largest tensor: the file still loads, with one number changed."""
    member = max(zipfile.ZipFile(state_pt).infolist(), key=lambda i: i.file_size)
    with open(state_pt, "r+b") as f:
        f.seek(member.header_offset + 26)  # local file header: name and extra-field lengths at bytes 26-29
        n, extra = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        f.seek(member.header_offset + 30 + n + extra + member.file_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))


def test_a_corrupt_checkpoint_is_never_loaded_and_resume_falls_back(warm_checkpoint, straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)  # a finished run: checkpoint-5 and checkpoint-6
    assert checkpoint_names(out) == ["checkpoint-5", "checkpoint-6"]

    # a truncated model.safetensors (a crash of the storage layer, a half copy): resume takes checkpoint-5
    model = out / "checkpoint-6" / "model.safetensors"
    size = os.path.getsize(model)
    os.truncate(model, size // 2)
    proc = train(warm_checkpoint, out, *STEPS, "--resume", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"{out}/checkpoint-6: skipped, model.safetensors has {size // 2:,} bytes where its manifest says {size:,} "
            "(truncated or half copied); trying the next newest") in proc.stdout.splitlines()
    assert f"resumed from {out}/checkpoint-5 at step 5" in proc.stdout
    assert_same_run(straight, out)  # step 5 done again, to the same numbers

    # a flipped bit in the optimizer state, which torch.load does not notice: resume takes checkpoint-5 again
    flip_a_bit_in_a_tensor(out / "checkpoint-6" / "state.pt")
    torch.load(out / "checkpoint-6" / "state.pt", weights_only=True)  # it loads: only the manifest can tell
    proc = train(warm_checkpoint, out, *STEPS, "--resume", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"{out}/checkpoint-6: skipped, state.pt does not match the sha256 in its manifest (a flipped bit or a bad "
            "copy); trying the next newest") in proc.stdout.splitlines()
    assert_same_run(straight, out)

    # both checkpoints bad: one line naming the bad files, and nothing on disk changes
    flip_a_bit_in_a_tensor(out / "checkpoint-6" / "state.pt")
    os.truncate(out / "checkpoint-5" / "model.safetensors", 1000)
    before = snapshot(out)
    proc = train(warm_checkpoint, out, *STEPS, "--resume", "1")
    assert_one_clear_line(proc, f"train.py: error: --resume 1: --out_dir '{out}' holds no complete checkpoint-<step>/ to "
                                "resume from (checkpoint-6: state.pt does not match the sha256 in its manifest (a flipped "
                                "bit or a bad copy); checkpoint-5: model.safetensors has 1,000 bytes where its manifest says "
                                f"{size:,} (truncated or half copied)); check --out_dir, or start over with --overwrite 1 "
                                "(deletes checkpoint-5, checkpoint-6, log.jsonl)")
    assert snapshot(out) == before


def test_a_checkpoint_from_before_manifests_is_checked_by_its_lengths(tmp_path, capsys):
    from safetensors.torch import save_file

    for step in (1, 2):  # as the earlier save wrote them: no manifest.json
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "config.json").write_text("{}")
        save_file({"w": torch.arange(1000.0)}, path / "model.safetensors")
        torch.save({"step": step}, path / "state.pt")
    assert checkpoints.latest_checkpoint(str(tmp_path))[:2] == (str(tmp_path / "checkpoint-2"), {"step": 2})
    assert "checkpoint-2: has no manifest.json (written before checkpoints carried one): checking file lengths only" \
        in capsys.readouterr().out
    size = os.path.getsize(tmp_path / "checkpoint-2" / "model.safetensors")
    os.truncate(tmp_path / "checkpoint-2" / "model.safetensors", size - 1)
    path, state, skipped = checkpoints.latest_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "checkpoint-1")
    assert skipped == [f"checkpoint-2: model.safetensors has {size - 1:,} bytes where its header says {size:,} (truncated?)"]


def test_a_save_removes_the_newer_checkpoints_resume_skipped_and_keeps_the_good_ones(tmp_path):
    """Resume skipped a corrupt checkpoint-9 and went on from an older one: with --keep_checkpoints 1, counting
    checkpoint-9 among the newest would delete every good checkpoint and keep the corrupt one."""
    out = str(tmp_path)

    def write_model(path):
        for name in ("config.json", "model.safetensors"):
            open(os.path.join(path, name), "w").write("{}")
    checkpoints.save_checkpoint(out, 2, write_model, {"step": 2}, keep=1)
    os.makedirs(os.path.join(out, "checkpoint-9"))  # what resume skipped (empty: no manifest, no files)
    checkpoints.save_checkpoint(out, 3, write_model, {"step": 3}, keep=1)
    assert checkpoint_names(out) == ["checkpoint-3"]
