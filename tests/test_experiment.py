"""experiments/v2.py's, v3.py's and lr.py's tables from logs alone (--skip_training): the paired differences, their
95% t-intervals, Holm's correction and the lucky-guess shares are recomputed here by hand from synthetic logs. No
model is built or trained."""
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import torch

from conftest import rounding
from experiments import trials

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_log(path, finals, lucky):
    """A train.py log of 4 steps with evaluations before RL and after steps 2 and 4."""
    os.makedirs(path, exist_ok=True)
    recs = [{"config": {}, "world": 1}, {"step": -1, "eval_accuracy": 0.25, "eval_avg@4": 0.3}]
    for step in range(4):
        rec = {"step": step, "reward": 0.5, "lucky": lucky, "clusters": 3.5 if lucky else 0.0}
        if step in (1, 3):
            g, a = finals if step == 3 else (0.5, 0.4)
            rec.update({"eval_accuracy": g, "eval_avg@4": a, "eval_lucky@4": lucky})
        recs.append(rec)
    with open(os.path.join(path, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


def test_tables_from_logs(tmp_path):
    finals = {("uniform", 0, 0): (0.90, 0.80), ("uniform", 0, 1): (0.80, 0.70), ("uniform", 1, 0): (0.85, 0.60),
              ("uniform", 1, 1): (0.95, 0.90), ("atrl", 0, 0): (0.95, 0.85), ("atrl", 0, 1): (0.80, 0.75),
              ("atrl", 1, 0): (0.90, 0.70), ("atrl", 1, 1): (0.90, 0.80)}
    for (arm, w, r), f in finals.items():
        write_log(tmp_path / "runs" / f"{arm}-w{w}-r{r}", f, lucky=0.1 if arm == "atrl" else 0.0)
    proc = subprocess.run([sys.executable, "experiments/v2.py", "--skip_training", "--out", str(tmp_path), "--arms",
                           "uniform", "atrl", "--warm_seeds", "0", "1", "--steps", "4", "--eval_every", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = json.loads((tmp_path / "arms.json").read_text())
    cells = [(w, r) for w in (0, 1) for r in (0, 1)]
    diffs = [finals["atrl", w, r][0] - finals["uniform", w, r][0] for w, r in cells]
    assert arms["atrl"]["greedy"]["vs_uniform"] == diffs
    assert arms["atrl"]["greedy"]["start"] == 0.25 and arms["uniform"]["avg@4"]["final"] == [0.8, 0.7, 0.6, 0.9]
    # the curve: the mean of the evaluations after RL began (steps 2 and 4)
    assert arms["atrl"]["avg@4"]["area"][0] == statistics.mean([0.4, 0.85])
    assert arms["atrl"]["lucky_train"] == 0.1 and arms["uniform"]["lucky_train"] == 0.0
    assert arms["atrl"]["clusters"] == 3.5
    # summary: mean and 95% t-interval (3 degrees of freedom: t = 3.18) of the 4 paired differences
    mean, half = statistics.mean(diffs), 3.18 * statistics.stdev(diffs) / 2
    summary = (tmp_path / "summary.md").read_text()
    assert f"| atrl | 0.250 | {statistics.mean(f[0] for k, f in finals.items() if k[0] == 'atrl'):.3f} ± " in summary
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | 2/4" in summary, summary
    assert (tmp_path / "curves.png").exists()


# --- experiments/trials.py: the statistics both experiments share, and the skip rule -------------------------------------

def test_t_quantiles_match_the_table_and_holm_is_monotone():
    # the table is rounded to 2 decimals (0.005); t_cdf's Simpson error, (b - a) h^4 max|f^(4)| / 180, over the
    # density at t moves the quantile by < 5e-7 (df = 1, t = 12.7, h = t / 2000, the worst; bisection: 2000 / 2^100)
    for df, t in trials.T_95.items():
        assert abs(trials.t_quantile(0.975, df) - t) <= 0.005 + 1e-6, df
    # Cauchy: 1/2 + atan(1)/pi; Simpson's error on [0, 1] (|f^(4)| <= 24 / pi) and the rounding of its 2001 terms
    simpson = 24 / math.pi / 180 * (1 / 2000) ** 4
    assert abs(trials.t_cdf(1.0, 1) - 0.75) <= simpson + rounding(2001, 0.25, torch.float64)
    assert trials.paired_p([0.1, -0.1, 0.05, -0.05]) == 1.0
    assert trials.paired_p([0.02, 0.03, 0.025, 0.035]) < 0.01 < trials.paired_p([0.02, -0.01, 0.03, 0.0])
    p = [0.001, 0.2, 0.015, 0.04]
    adjusted = trials.holm(p)
    assert adjusted == [0.004, 0.2, 0.045, 0.08]                          # 4p, max(2p, prev), 3p, max(2p, prev)
    assert all(a >= b for a, b in zip(adjusted, p))


def test_a_run_counts_as_finished_only_with_its_last_evaluation(tmp_path):
    write_log(tmp_path / "done", (0.9, 0.8), 0.0)
    assert trials.finished(str(tmp_path / "done"), 4) and not trials.finished(str(tmp_path / "done"), 5)
    lines = (tmp_path / "done" / "log.jsonl").read_text().splitlines()
    (tmp_path / "done" / "log.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # killed before its last step
    assert not trials.finished(str(tmp_path / "done"), 4) and not trials.finished(str(tmp_path / "none"), 4)


# --- experiments/v3.py: the gates' verdicts from synthetic logs and gate-0 measurements --------------------------

def gate0_json(removed, signal_ci):
    """A gate-0 measurement whose filler + grounded carry `removed` of uniform's noise and a signal interval."""
    classes = {n: {"share": 0.1, "high_entropy_share": 0.01, "entropy": 0.1, "rho": 0.1, "dependency": 0.1,
                   "w_atrl2": 1.0, "w_atrl4": 1.0, "picked_anchor": 0.1, "picked_entropy_top": 0.1,
                   "picked_vppo_top": 0.1} for n in ("perception", "filler", "grounded", "copy", "other")}
    snr = {n: {"noise": 1.0, "signal": 0.1, "signal_ci": [0.0, 0.2]} for n in ("perception", "grounded", "fork",
                                                                             "arithmetic", "copy", "filler", "other")}
    snr["all"] = {"noise": 10.0, "signal": 1.0, "signal_ci": [0.8, 1.2]}
    snr["kept"] = {"noise": 10.0 * (1 - removed), "signal": 1.0, "signal_ci": [0.8, 1.2]}
    snr["noise"] = {"noise": 10.0 * removed, "signal": sum(signal_ci) / 2, "signal_ci": signal_ci}
    for name in ("derailed", "noise_clean", "clean", "kept_clean"):
        snr[name] = {"noise": 5.0, "signal": 0.5, "signal_ci": [0.4, 0.6]}
    for v in snr.values():
        v["noise_trunk"] = v["noise"] / 2
    return {"task": "visualmath-v3", "snr": snr, "derailed_share": 0.1, "census": {"tokens": 100, "low_entropy_share": 0.5,
            "high_entropy_share": 0.2, "classes": classes, "anchor_precision": {"perception": 0.5, "grounded": 0.6}}}


def finished_run(path, before, every_step, evals):
    """A finished train.py log.jsonl of 4 steps: `before` evaluated at step -1, `every_step` logged at each step,
    evals[0] and evals[1] evaluated after steps 2 and 4 (so a curve mean is their mean)."""
    os.makedirs(path, exist_ok=True)
    recs = [{"config": {}}, {"step": -1, **before}]
    recs += [{"step": step, **every_step, **(evals[step // 2] if step in (1, 3) else {})} for step in range(4)]
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def v3_run(tmp_path, name, curve):
    """A finished v3 run of 4 steps whose avg@4 after RL is `curve` (two evaluations)."""
    finished_run(tmp_path / "runs" / name, {"eval_accuracy": 0.3, "eval_avg@4": 0.3},
                 {"clip_frac": 0.01, "w_perception": 1.0, "w_filler": 1.0},
                 [{"eval_accuracy": 0.5, "eval_avg@4": a} for a in curve])


def run_v3(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/v3.py", "--skip_training", "--out", str(tmp_path),
                           "--warm_seeds", "0", "1", "--rl_seeds", "0", "1", "--steps", "4", "--eval_every", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (tmp_path / "summary.md").read_text()


def test_v3_gates_from_synthetic_measurements_and_logs(tmp_path):
    os.makedirs(tmp_path / "gate0")
    for w in (0, 1):
        (tmp_path / "gate0" / f"v3-{w}.json").write_text(json.dumps(gate0_json(0.6, [-0.05, 0.04])))
    (tmp_path / "gate0" / "fixed-0.json").write_text(json.dumps(gate0_json(0.1, [-0.01, 0.01])))
    assert "**Gate 0: PASS**" in run_v3(tmp_path) and "Not run yet." in run_v3(tmp_path)
    gain = {(0, 0): 0.05, (0, 1): 0.04, (1, 0): 0.06, (1, 1): 0.045}      # oracle - uniform on v3, per pair
    for (w, r), g in gain.items():
        for arm in ("uniform", "uniform-lr0.5x", "uniform-lr2x", "oracle_mask", "oracle_up", "random_mask"):
            v3_run(tmp_path, f"v3-{arm}-w{w}-r{r}", (0.5, 0.6))
        v3_run(tmp_path, f"v3-oracle-w{w}-r{r}", (0.5 + g, 0.6 + g))
        for arm in ("uniform", "oracle", "uniform-lr2x"):
            v3_run(tmp_path, f"fixed-{arm}-w{w}-r{r}", (0.5, 0.6 + (0.01 if arm == "oracle" else 0)))
    summary = run_v3(tmp_path)
    diffs = list(gain.values())
    mean, half = statistics.mean(diffs), 3.18 * statistics.stdev(diffs) / 2
    assert f"oracle - uniform: v3 {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] (4/4 pairs above)" in summary
    assert "**Gate 1: PASS: a dilution effect**" in summary, summary
    # the same gain on v3-fixed: no longer a tie, so no dilution effect
    for w, r in gain:
        v3_run(tmp_path, f"fixed-oracle-w{w}-r{r}", (0.55, 0.65))
    assert "**Gate 1: FAIL: no dilution effect at this scale**" in run_v3(tmp_path)
    # a filler that carries too little noise fails gate 0 (on one warm start is enough)
    (tmp_path / "gate0" / "v3-1.json").write_text(json.dumps(gate0_json(0.4, [-0.05, 0.04])))
    summary = run_v3(tmp_path)
    assert "**Gate 0: FAIL**" in summary and "Incomplete" not in summary
    # gate 1 run anyway (--force_gate1) and stopped part-way: the summary says both, and counts what finished
    assert "Run although gate 0 failed" in summary
    shutil.rmtree(tmp_path / "runs" / "v3-random_mask-w1-r1")
    summary = run_v3(tmp_path)
    assert "**Incomplete: 39 of 40 runs finished**" in summary and "**Gate 1: FAIL" in summary


# --- experiments/dilution.py: gate 0's measurement on a real (tiny) policy --------------------------------------------------

def test_gradient_parts_add_up_and_noise_is_a_variance(warm_checkpoint, float64_norms):
    """On the v1-warmed fixture asked v3 questions (its samples never follow v3's grammar): the class parts of
    the gradient add up to uniform's, every noise is >= 0, and a second measurement gives the same numbers.

    Measured in float64, so that the identities hold to float64 rounding on every CPU, thread count and kernel
    set (#33: in float32 the parts' sum missed the whole by 1.7e-5 relative on one CPU). float64_norms
    (conftest.py): the model's RMSNorm would otherwise round every hidden state to float32, and the gradient of
    the whole loss and the sum of its class parts would differ by float32 roundings (1e-8 relative). The float32
    log-softmax of rollout.token_logprobs is no such place: its backward is row by row, and every row -- token --
    belongs to exactly one class, so the classes' logit gradients sum to the whole's bit for bit."""
    from experiments import dilution
    from models import family

    kwargs = dict(batches=3, census_batches=1, max_new_tokens=16, prompts=2, group=4, dtype="float64")
    m = dilution.measure(warm_checkpoint, "visualmath-v3", **kwargs)
    snr, K, first = m["snr"], m["batches"], m["direction_batches"]  # projections: batches first .. K-1
    classes = ("perception", "grounded", "fork", "arithmetic", "copy", "filler", "other")
    # The bound. A float64 dot product of N terms is off by at most N u sum_i |x_i d_i| <= N u |x| |d| (Higham,
    # Accuracy and Stability of Numerical Algorithms, 2nd ed., Eq. 3.5 and Cauchy-Schwarz; u = 2^-53, |d| = 1).
    # N = the trainable parameters (~1e6; the whole checkpoint's count bounds it). A signal is a mean of such
    # products, one per projection batch, over gradient vectors the test has the norms of (squared_norms), and
    # the handful of vector additions between the groups (all = sum of 7 parts, kept = all - noise) add a few u
    # per element each, so  |a - b| <= N eps64 x (mean over the projection batches of the norms of every vector
    # involved), eps64 = 2u: the factor 2 pays for those few extra roundings (N >> 7). Derailed vs all: both
    # are one backward through the same graph of upstream gradients that sum exactly (above); a float64 backward
    # is off by its accumulations' lengths x u x the magnitudes of their terms -- lengths <= the ~800 tokens of a
    # batch or the 256-wide MLP, a few dozen in a row, far below N -- taken as the gradients' norms.
    N = sum(p.numel() for p in family.load_model(warm_checkpoint).parameters())
    eps = rounding(N, 1.0, torch.float64)                               # N eps64, relative to the norms
    norms = {g: [v ** 0.5 for v in snr[g]["squared_norms"]] for g in snr}  # |g_k|, k = 0 .. K-1

    def signal_bound(groups):
        return eps * sum(sum(norms[g][k] for g in groups) for k in range(first, K)) / (K - first)

    assert m["derailed_share"] == 1.0                                   # all of it: one group, measured twice
    assert abs(snr["derailed"]["signal"] - snr["all"]["signal"]) <= signal_bound(["derailed", "all", *classes])
    # noise = (sum_k |g_k|^2 - |sum_k g_k|^2 / K) / (K - 1): with |gd_k - ga_k| <= eps S_k (S_k: the norms of
    # the derailed, all and class vectors of batch k), ||gd|^2 - |ga|^2| <= |gd - ga| (|gd| + |ga|) <= eps S_k^2,
    # the same for the sum's term ((sum_k S_k)^2 / K <= sum_k S_k^2), and the squares' own rounding: 3 eps sum S^2.
    S2 = [sum(norms[g][k] for g in ("derailed", "all", *classes)) ** 2 for k in range(K)]
    assert abs(snr["derailed"]["noise"] - snr["all"]["noise"]) <= 3 * eps * sum(S2) / (K - 1)
    # a variance is >= 0 exactly; computed, it is off by the rounding of its squares: eps (sum_k |g_k|^2 + the
    # same bound for |sum g_k|^2 / K) / (K - 1), the trunk's norms being at most the full vector's
    assert all(v["noise"] >= -2 * eps * sum(v["squared_norms"]) / (K - 1) and
               v["noise_trunk"] >= -2 * eps * sum(v["squared_norms"]) / (K - 1) for v in snr.values())
    parts = sum(snr[c]["signal"] for c in classes)
    assert abs(parts - snr["all"]["signal"]) <= signal_bound(["all", *classes])
    assert abs(snr["kept"]["signal"] + snr["noise"]["signal"] - parts) <= signal_bound(["all", "kept", "noise", *classes])
    assert len(snr["all"]["squared_norms"]) == 3 and snr["all"]["noise"] > 0
    # each share is a float32 count / n (exact count, then at most two roundings: 1/n and the product, 2 x 2^-24
    # relative), so the shares, which sum to 1 exactly, sum to 1 within eps32 (plus the float64 sum's rounding)
    shares = sum(c["share"] for c in m["census"]["classes"].values())
    assert abs(shares - 1) <= rounding(1, 1.0) + rounding(8, 1.0, torch.float64)
    # the same measurement again, in the same process on the same path (kernels, threads, seeds): bit for bit
    assert dilution.measure(warm_checkpoint, "visualmath-v3", **kwargs)["snr"] == snr


def lr_run(tmp_path, name, valid, test, update_norm=0.01):
    """A finished run of experiments/lr.py's grid whose two evaluations give validation avg@4 `valid` and test
    avg@4 `test` (so each is its curve mean too)."""
    finished_run(tmp_path / "runs" / name, {"eval_avg@4": 0.3, "test_avg@4": 0.3, "test_accuracy": 0.2},
                 {"update_norm": update_norm, "push_perception": 0.8, "push_filler": 0.1, "clip_frac": 0.0},
                 [{"eval_accuracy": valid, "eval_avg@4": valid, "test_avg@4": test, "test_accuracy": test}] * 2)


def run_lr(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/lr.py", "--skip_training", "--out", str(tmp_path), "--warm",
                           str(tmp_path / "warm"), "--arms", "uniform", "oracle", "atrl", "--mults", "1", "2",
                           "--warm_seeds", "0", "1", "--rl_seeds", "0", "1", "--steps", "4", "--eval_every", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (tmp_path / "summary.md").read_text()


def test_lr_study_chooses_on_validation_and_compares_on_test(tmp_path):
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    gain = {(0, 0): 0.05, (0, 1): 0.04, (1, 0): 0.06, (1, 1): 0.045}   # oracle at its rate - uniform at its rate
    for i, (w, r) in enumerate(pairs):
        # uniform is best at 2x on validation (and on test)
        lr_run(tmp_path, f"uniform-lr1x-w{w}-r{r}", 0.5, 0.5)
        lr_run(tmp_path, f"uniform-lr2x-w{w}-r{r}", 0.6, 0.6, update_norm=0.02)
        # the oracle's validation prefers 1x although its test metric is far better at 2x: the choice must be 1x
        lr_run(tmp_path, f"oracle-lr1x-w{w}-r{r}", 0.7, 0.6 + gain[(w, r)])
        lr_run(tmp_path, f"oracle-lr2x-w{w}-r{r}", 0.65, 0.95)
        # atrl: best at 2x, equal to uniform's test up to a sign-alternating wobble
        lr_run(tmp_path, f"atrl-lr1x-w{w}-r{r}", 0.4, 0.4)
        lr_run(tmp_path, f"atrl-lr2x-w{w}-r{r}", 0.55, 0.6 + (0.01 if i % 2 else -0.01))
    summary = run_lr(tmp_path)
    assert "| uniform | 2x **chosen** |" in summary and "| oracle | 1x **chosen** |" in summary
    assert "| atrl | 2x **chosen** |" in summary and "| oracle | 2x |" in summary
    assert ("| uniform | 2x **chosen** | 0.600 [0.600, 0.600] | 0.600 [0.600, 0.600] | 0.0200 | 0.80 / 0.10 / - / "
            in summary)  # no spread over the pairs; the mean update norm and push shares over steps and pairs
    diffs = [gain[p] for p in pairs]  # never the 2x test metric (0.95 - 0.6), which validation did not choose
    mean, half = trials.interval(diffs)
    p_oracle = trials.paired_p(diffs)
    p_atrl = trials.paired_p([-0.01, 0.01, -0.01, 0.01])
    assert p_atrl == 1.0 and p_oracle < 0.025                              # so Holm doubles the oracle's p
    assert (f"| oracle (1x) | {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | 4/4 | {p_oracle:.3f} | "
            f"{min(1.0, 2 * p_oracle):.3f} |") in summary, summary
    assert "**oracle** (best at 1x on validation) beats uniform at uniform's own best rate" in summary
    assert "**atrl** (best at 2x on validation) is not told apart from uniform" in summary
    assert "Runs finished: 24 of 24." in summary and os.path.exists(tmp_path / "lr_curves.png")
    # a rate that misses a pair is never chosen, and the summary says the grid is incomplete
    shutil.rmtree(tmp_path / "runs" / "oracle-lr1x-w1-r1")
    summary = run_lr(tmp_path)
    assert "| oracle | 2x **chosen** |" in summary and "**Incomplete**" in summary and "23 of 24" in summary

