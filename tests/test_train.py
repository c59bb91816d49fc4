"""train.py end to end, as a subprocess, on a tiny warm-started checkpoint (CPU, seconds per run).

What is checked: every --weighting arm runs; micro-batching (gradient accumulation) leaves the gradient
unchanged for every loss aggregation; 2 gloo processes under torchrun (DDP and FSDP2) equal 1 process;
4 steps equal 2 steps + --resume + 2 steps, and likewise under FSDP2; one seed gives the same numbers twice,
and W computed inline equals W computed on the probe's worker thread; bad config stops with a message naming
the value; a non-finite loss skips the update and is logged; PPO epochs / mini-batches / KL / dual-clip run;
dynamic sampling replaces flat groups. Gradients are compared through the logged global grad norm and through the saved
weights. NOTE: AdamW's first step is ~lr * sign(g), which is blind to the gradient's scale and amplifies
summation-order noise in near-zero gradients; comparisons therefore use a large --adam_eps, which makes the
update ~ lr * g / eps for small g (scale-sensitive and smooth).
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from infra import checkpoints
from conftest import REPO, rounding, torchrun_command

SMALL = ["--prompts_per_step", "2", "--group_size", "4", "--max_new_tokens", "12", "--eval_size", "4",
         "--eval_every", "0", "--mask_truncated", "0", "--lr", "1e-3", "--warmup_steps", "1",
         "--dataset", "visualmath-v1"]  # the fixture checkpoint was warmed up on v1; the arm smoke test runs v2
EXACT = ["--adam_eps", "1e-2"]  # see the module docstring


def run_train(ckpt, out_dir, *args, torchrun=0, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if torchrun:
        cmd = [*torchrun_command(torchrun), "train.py"]
    else:
        cmd = [sys.executable, "train.py"]
    cmd += ["--model", ckpt, "--out_dir", str(out_dir), *SMALL, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        # judge by results too: some torch builds abort at exit after a clean run, so also require the log
        assert proc.returncode == 0 or checkpoints.newest_checkpoint_name(str(out_dir)), proc.stderr[-3000:]
    return proc


def records(out_dir):
    lines = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    assert "config" in lines[0]  # the full config is the first record
    return [r for r in lines[1:] if r["step"] >= 0]


def weights(out_dir):
    """The weights of out_dir's newest checkpoint-<step>/."""
    return load_file(os.path.join(out_dir, checkpoints.newest_checkpoint_name(str(out_dir)), "model.safetensors"))


def assert_same_weights(a, b, atol=2.4e-7):
    """Every weight equal up to `atol` relative to max(1, |w|): 2.4e-7 is 2 float32 ulps at 1.0, the rounding a
    summation in another order may leave after an update (a scale or masking bug moves weights by ~lr = 1e-3)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(((wa[k] - wb[k]).abs() / wb[k].abs().clamp_min(1.0)).max().item() for k in wa)
    assert worst <= atol, f"weights differ by {worst} (relative)"


@pytest.mark.parametrize("arm", ["uniform", "atrl", "tokens", "anchor_only", "low_only", "random", "vppo", "entropy"])
def test_two_step_smoke_run_of_each_weighting_arm(warm_checkpoint, tmp_path, arm):
    run_train(warm_checkpoint, tmp_path, "--steps", "2", "--weighting", arm, "--dataset", "visualmath")  # the grid
    recs = records(tmp_path)
    assert [r["step"] for r in recs] == [0, 1]
    for r in recs:
        assert all(v == v for v in r.values() if isinstance(v, float)), r  # no NaN anywhere
        assert r["skipped"] == 0
    if arm != "uniform":  # anchors (or the peer arms' kept tokens) were selected; the AT-RL arms also clustered
        assert 0 < recs[0]["anchor_frac"] < 0.5
        assert (recs[0]["clusters"] >= 1) == (arm in ("atrl", "anchor_only", "low_only", "random"))
    for key in ("eval_accuracy", "eval_accuracy_ci", "eval_avg@4", "eval_avg@4_ci", "eval_read", "eval_lucky", "eval_n"):
        assert key in recs[-1], key
    assert os.path.exists(tmp_path / "checkpoint-2" / "state.pt")


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_give_the_gradient_of_the_whole_batch(warm_checkpoint, tmp_path, agg):
    common = ["--steps", "1", "--loss_agg", agg, "--weighting", "atrl", *EXACT]
    run_train(warm_checkpoint, tmp_path / "whole", *common, "--micro_batch_size", "8")
    run_train(warm_checkpoint, tmp_path / "micro", *common, "--micro_batch_size", "2")
    whole, micro = records(tmp_path / "whole")[0], records(tmp_path / "micro")[0]
    assert whole["grad_norm"] > 0, "no gradient: the test would prove nothing"
    assert micro["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
    assert micro["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-6)  # the PPO loss at r = 1 is ~0
    assert_same_weights(tmp_path / "whole", tmp_path / "micro")


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(warm_checkpoint, tmp_path, sharding):
    common = ["--steps", "1", "--weighting", "atrl", "--micro_batch_size", "2", *EXACT]
    run_train(warm_checkpoint, tmp_path / "one", *common)
    run_train(warm_checkpoint, tmp_path / "two", *common, "--fsdp", str(int(sharding == "fsdp")), torchrun=2)
    one, two = records(tmp_path / "one")[0], records(tmp_path / "two")[0]
    assert one["grad_norm"] > 0
    for key in ("reward", "accuracy", "grad_norm", "loss", "anchor_frac"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), key
    assert_same_weights(tmp_path / "one", tmp_path / "two")  # FSDP: gathered full weights


def test_resume_continues_exactly(warm_checkpoint, tmp_path):
    run_train(warm_checkpoint, tmp_path / "straight", "--steps", "4", "--save_every", "2")
    run_train(warm_checkpoint, tmp_path / "split", "--steps", "2", "--save_every", "2")
    run_train(warm_checkpoint, tmp_path / "split", "--steps", "4", "--save_every", "2", "--resume", "1")
    a, b = records(tmp_path / "straight"), records(tmp_path / "split")
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("reward", "loss", "grad_norm", "lr", "anchor_frac"):
            assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    assert_same_weights(tmp_path / "straight", tmp_path / "split", atol=0.0)


def test_fsdp_resume_continues_exactly(warm_checkpoint, tmp_path):
    """Under FSDP2 the checkpoint holds full (gathered) weights and optimizer state; each rank re-shards them."""
    common = ["--weighting", "atrl", "--micro_batch_size", "2", "--fsdp", "1", "--save_every", "1"]
    run_train(warm_checkpoint, tmp_path / "straight", "--steps", "2", *common, torchrun=2)
    run_train(warm_checkpoint, tmp_path / "split", "--steps", "1", *common, torchrun=2)
    run_train(warm_checkpoint, tmp_path / "split", "--steps", "2", *common, "--resume", "1", torchrun=2)
    a, b = records(tmp_path / "straight"), records(tmp_path / "split")
    assert [r["step"] for r in b] == [0, 1] and a[1]["grad_norm"] > 0
    for key in ("reward", "loss", "grad_norm", "lr", "anchor_frac"):
        assert a[1][key] == b[1][key], (key, a[1][key], b[1][key])
    assert_same_weights(tmp_path / "straight", tmp_path / "split", atol=0.0)


def test_two_runs_with_one_seed_give_the_same_numbers(warm_checkpoint, tmp_path):
    """... and computing W inline instead of on the probe's worker thread changes nothing either."""
    run_train(warm_checkpoint, tmp_path / "a", "--steps", "2")
    run_train(warm_checkpoint, tmp_path / "b", "--steps", "2")
    run_train(warm_checkpoint, tmp_path / "inline", "--steps", "2", "--overlap_weights", "0")
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rs]  # noqa: E731
    assert strip(records(tmp_path / "a")) == strip(records(tmp_path / "b")) == strip(records(tmp_path / "inline"))
    assert records(tmp_path / "a")[0]["anchor_frac"] > 0  # the probe and W did run
    assert_same_weights(tmp_path / "a", tmp_path / "inline", atol=0.0)


@pytest.mark.parametrize("args, message", [
    (["--group_size", "1"], "--group_size 1"),
    (["--weighting", "sometimes"], "--weighting 'sometimes'"),
    (["--micro_batch_size", "3"], "--micro_batch_size 3"),
    (["--anchor_frac", "0"], "--anchor_frac 0"),
    (["--loss_agg", "mean"], "--loss_agg 'mean'"),
    (["--weighting", "oracle"], "--weighting 'oracle': the oracle arms need known token classes"),  # on v1
])
def test_bad_config_stops_with_a_clear_message(warm_checkpoint, tmp_path, args, message):
    proc = run_train(warm_checkpoint, tmp_path, "--steps", "1", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]


def test_v3_runs_log_the_realised_weight_of_each_token_class(warm_checkpoint, tmp_path):
    """On VisualMath v3 every response token gets a class (chains.label_batch) and the log the mean W per class:
    exactly 1 everywhere under uniform; the oracle arms run and keep the token-mean of W at 1. The push shares
    (push_<class>) add up to 1, and --log_update's update_norm stays within AdamW's first-step bound: each weight
    moves by at most lr (|m_hat| / sqrt(v_hat) = |g| / |g| on the first step), so ||dW|| <= lr * sqrt(n)."""
    classes = ("perception", "grounded", "fork", "arithmetic", "copy", "filler", "other")
    for arm in ("uniform", "oracle", "random_mask"):
        run_train(warm_checkpoint, tmp_path / arm, "--steps", "1", "--weighting", arm, "--dataset", "visualmath-v3",
                  "--eval_size", "0", "--log_update", "1", "--test_size", "4")
        rec = records(tmp_path / arm)[0]
        per_class = {k: v for k, v in rec.items() if k[2:] in classes and k.startswith("w_")}
        assert per_class and all(v == v for v in per_class.values()), rec
        if arm == "uniform":
            assert set(per_class.values()) == {1.0}, per_class
        shares = [v for k, v in rec.items() if k.startswith("push_") and k[5:] in classes]
        # float64 sums of the <= 2 x 4 x 12 tokens' non-negative values, by class and in all, then 7 divisions
        close = rounding(2 * 4 * 12 + 8, 1.0, torch.float64)
        assert shares and (abs(sum(shares) - 1) <= close or sum(shares) == 0.0), rec  # 0: no advantage
        # SMALL: --lr 1e-3, --warmup_steps 1; each weight's rounding adds u |w| to its move, and update_norm's float32
        # sums of squares (<= m terms a tensor) m u relative
        ckpt = list(load_file(os.path.join(warm_checkpoint, "model.safetensors")).values())
        n, m = sum(v.numel() for v in ckpt), max(v.numel() for v in ckpt)
        step = 1e-3 + rounding(1, max(float(v.abs().max()) for v in ckpt)) / 2
        assert 0.0 <= rec["update_norm"] <= step * (n * (1 + rounding(m) / 2)) ** 0.5, rec
        assert rec["test_n"] == 4 and "eval_n" not in rec  # the test set is scored though no held-out set is


def test_non_finite_loss_skips_the_update_and_is_logged(warm_checkpoint, tmp_path):
    proc = run_train(warm_checkpoint, tmp_path, "--steps", "2", "--debug_nan_step", "1", "--save_every", "1")
    first, rec = records(tmp_path)
    assert first["skipped"] == 0 and rec["skipped"] == 1
    # the skip is logged with the attention kernels that ran (ops/sdpa.py), as on the first step: CPU flash here
    assert rec["kernels"] == first["kernels"] and rec["kernels"]["backward"] == ["flash (CPU) backward"]
    assert set(rec["kernels"]) == {"rollout", "forward", "backward", "probe"}
    assert "step 1: non-finite loss or gradient (grad norm nan, flash (CPU) backward) -- update skipped" in proc.stdout
    before = load_file(os.path.join(tmp_path, "checkpoint-1", "model.safetensors"))  # after step 0 ...
    after = weights(tmp_path)  # ... and after the poisoned step 1
    assert all(torch.equal(before[k], after[k]) for k in before), "a poisoned step must not change the weights"


def test_ppo_epochs_mini_batches_kl_and_dual_clip(warm_checkpoint, tmp_path):
    """Several updates per batch: pi_old comes from a no-grad pass (which also carries the probe), so after
    the first update ratios move away from 1 and get clipped; the reference model makes KL > 0."""
    run_train(warm_checkpoint, tmp_path, "--steps", "1", "--ppo_epochs", "2", "--mini_batches", "2",
              "--micro_batch_size", "2", "--kl_coef", "0.1", "--kl_estimator", "k3", "--dual_clip", "3", "--lr", "1e-2")
    rec = records(tmp_path)[0]
    assert rec["skipped"] == 0 and rec["grad_norm"] > 0
    assert rec["kl"] > 0 and rec["clip_frac"] > 0, rec
    assert 0 < rec["anchor_frac"] < 0.5


def test_dynamic_sampling_replaces_flat_groups(warm_checkpoint, tmp_path):
    run_train(warm_checkpoint, tmp_path / "plain", "--steps", "2", "--prompts_per_step", "4")
    run_train(warm_checkpoint, tmp_path / "dyn", "--steps", "2", "--prompts_per_step", "4",
              "--dynamic_sampling", "1", "--max_refills", "3")
    plain, dyn = records(tmp_path / "plain"), records(tmp_path / "dyn")
    assert sum(r["zero_std_groups"] for r in plain) > 0, "no flat groups: the test would prove nothing"
    assert sum(r["zero_std_groups"] for r in dyn) < sum(r["zero_std_groups"] for r in plain)


# --- which data: train on train, evaluate on the evaluation split, and say so (tasks/splits.py) -------------------

def test_data_lines_say_geometry3k_trains_on_train_and_evaluates_on_test(warm_checkpoint, tmp_path):
    import bench_fixtures
    folder = bench_fixtures.geometry3k(str(tmp_path / "geometry3k"))
    proc = run_train(warm_checkpoint, tmp_path / "run", "--steps", "1", "--dataset", folder)
    assert f"data: {folder} split=train rows=5 (training)" in proc.stdout
    assert f"data: {folder} split=test rows=4 (limit) (evaluation)" in proc.stdout
    assert records(tmp_path / "run")[0]["eval_n"] == 4
    # the synthetic default says its data too: a seed for training, the disjoint seed + 10000 held out
    proc = run_train(warm_checkpoint, tmp_path / "synthetic", "--steps", "1", "--eval_size", "0")
    assert "data: visualmath-v1 split=seed0 rows=2048 (training)" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--eval_split", "train"], "training and evaluation read the same rows"),
    (["--split", "trian"], "no split 'trian'"),
    (["--split", "test", "--eval_split", "test"], "training and evaluation read the same rows"),
])
def test_data_split_mistakes_stop_in_one_line(warm_checkpoint, tmp_path, args, message):
    import bench_fixtures
    folder = bench_fixtures.geometry3k(str(tmp_path / "geometry3k"))
    proc = run_train(warm_checkpoint, tmp_path / "run", "--steps", "1", "--dataset", folder, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "run" / "log.jsonl")  # nothing written for a run that cannot start
