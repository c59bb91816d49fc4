"""experiments/lr.py -- credit or step size? Every arm at its own best learning rate, on VisualMath v3.

Gate 1 of experiments/v3.py found that perfect token selection (the oracle) beats GRPO by about what doubling
GRPO's learning rate gains. Under Adam, removing gradient noise also lengthens the step along the useful
direction, so "the oracle equals a larger lr" does not yet say selection is worthless. The question here is
whether an arm reaches a better result than uniform reaches at ANY learning rate:

    best(arm)  = argmax_lr  mean_pairs  V(arm, lr)                 V: the validation metric, chosen on it only
    effect     = T(arm, best(arm)) - T(uniform, best(uniform))    T: the test metric, paired by (warm, RL seed)

Design, fixed here before any run:
  task        visualmath-v3, the warm starts of experiments/v3.py (models/tiny.py --task visualmath-v3 --seed W,
              shared in experiments/results/v3/warm/)
  arms        uniform, atrl, tokens, vppo, entropy, oracle (--weighting), every other flag at train.py's default
              when the study began, so --adv_std population (train.py's default became the sample std later, #30;
              pinned so that every run of the grid shares one convention; the two differ by sqrt(8/7) in scale)
  lr grid     {0.5, 1, 2, 4} x 1e-4 (train.py's default); while an arm's chosen rate is the top of the grid, every
              arm gets the next doubling too (up to 16x), so no arm's best is cut off by the grid
  pairs       warm starts 0, 1, 2 x RL seeds 0, 1 = 6 pairs; every (arm, lr) runs on the same 6
  runs        20 steps (as gate 1), evaluation every 5 steps on two held-out sets of 256 questions each:
              validation = train.py's eval_* (seed + 10000), test = test_* (--test_size, seed + 20000)
  metric      avg@4 (4 samples at temperature 1) averaged over the 4 evaluations after RL began (gate 1's)
  choice      best(arm) on the validation metric alone; the test metric of the other rates is reported, never used
  comparison  effect per arm (5 contrasts), mean and 95% t-interval over the 6 pairs, two-sided paired t-test,
              Holm's correction over the 5 arms (experiments/trials.py)
  why         per (arm, lr): the mean update norm ||dW|| per step (train.py --log_update 1), and where the update
              pushes, by token class: the share of sum_t |A_AT| (1 - pi(y_t)) on perception, filler, ... tokens
              (push_<class>; |dL/dz| of each token's own logit) -- does an arm win by direction or by size?

What it cannot say: selection noise on the training side (a lucky run at some rate) is shared by a pair's
validation and test metric, since both score the same trained policy; the held-out split removes only the
questions' share of it. And everything here is one 1M-parameter model on one synthetic task.

Run (finished runs are skipped, so an interrupted run continues; ~150 runs of ~2 min, two at a time):
    python experiments/lr.py                      # build the warm starts if needed, run the grid, write the tables
    python experiments/lr.py --skip_training      # every table and the figure again from <out>/runs/*/log.jsonl
Tests: `python -m pytest -q tests/test_experiment.py -k lr`.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as `python experiments/lr.py`: the repository root, not experiments/, heads the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import eval as eval_py  # train.py logs
from experiments import trials
from models import tiny
from tasks import chains

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="experiments/results/lr", help="runs, tables and the figure")
parser.add_argument("--warm", default="experiments/results/v3/warm", help="the v3 warm starts (built here if absent)")
parser.add_argument("--arms", nargs="+", default=["uniform", "atrl", "tokens", "vppo", "entropy", "oracle"])
parser.add_argument("--mults", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0], help="the grid, x --lr")
parser.add_argument("--max_mult", type=float, default=16.0, help="the grid grows by doublings up to this")
parser.add_argument("--lr", type=float, default=1e-4, help="the 1x learning rate (train.py's default)")
parser.add_argument("--warm_seeds", nargs="+", type=int, default=[0, 1, 2], help="models/tiny.py --seed of each warm start")
parser.add_argument("--rl_seeds", nargs="+", type=int, default=[0, 1], help="train.py --seed of each run")
parser.add_argument("--steps", type=int, default=20, help="RL steps per run")
parser.add_argument("--eval_every", type=int, default=5)
parser.add_argument("--eval_size", type=int, default=256, help="validation questions (train.py's held-out set)")
parser.add_argument("--test_size", type=int, default=256, help="test questions (train.py --test_size)")
parser.add_argument("--max_new_tokens", type=int, default=96, help="v3 answers are ~54 tokens")
parser.add_argument("--jobs", type=int, default=2, help="builds / runs in parallel (one thread each)")
parser.add_argument("--skip_training", action="store_true", help="tables from what is on disk; start nothing")
args = parser.parse_args()
VALID, TEST = "eval_avg@4", "test_avg@4"
PAIRS = [(w, r) for w in args.warm_seeds for r in args.rl_seeds]
BASE = "uniform"

# --------------------------------------------------------------------------------------------------
# The grid: warm starts, runs
# --------------------------------------------------------------------------------------------------


def warm_dir(seed):
    return os.path.join(args.warm, f"v3-{seed}")


def run_dir(arm, mult, w, r):
    return os.path.join(args.out, "runs", f"{arm}-lr{mult:g}x-w{w}-r{r}")


def train_job(arm, mult, w, r):
    out = run_dir(arm, mult, w, r)
    return (f"{arm} lr {mult:g}x w{w} r{r}",
            [sys.executable, "train.py", "--model", warm_dir(w), "--dataset", "visualmath-v3", "--seed", str(r),
             "--weighting", arm, "--lr", repr(args.lr * mult), "--steps", str(args.steps), "--eval_every",
             str(args.eval_every), "--eval_size", str(args.eval_size), "--test_size", str(args.test_size),
             "--max_new_tokens", str(args.max_new_tokens), "--log_update", "1", "--out_dir", out, "--overwrite", "1",
             "--keep_checkpoints", "1", "--adv_std", "population"], out + ".txt")


def run_grid(mults):
    """Every (arm, lr) on every pair not finished yet, pair by pair: a grid stopped part-way leaves whole pairs."""
    jobs = [train_job(a, m, w, r) for w, r in PAIRS for m in mults for a in args.arms
            if not trials.finished(run_dir(a, m, w, r), args.steps)]
    print(f"{len(jobs)} runs to do at {[f'{m:g}x' for m in mults]}", flush=True)
    trials.run_all(jobs, args.jobs)


def records(arm, mult, w, r):
    path = run_dir(arm, mult, w, r)
    return eval_py.read_log(os.path.join(path, "log.jsonl"))[1] if trials.finished(path, args.steps) else []


def curve(arm, mult, key):
    """{pair: the run's curve mean of key} over the pairs whose run finished."""
    out = {}
    for w, r in PAIRS:
        recs = records(arm, mult, w, r)
        if recs and trials.curve_mean(recs, key) is not None:
            out[(w, r)] = trials.curve_mean(recs, key)
    return out


def mults_on_disk():
    """The rates some run of the grid was made at (the grid may have grown in an earlier invocation)."""
    found = set(args.mults)
    if os.path.isdir(os.path.join(args.out, "runs")):
        for name in os.listdir(os.path.join(args.out, "runs")):
            if "-lr" in name and not name.endswith(".txt"):
                found.add(float(name.split("-lr")[1].split("x-")[0]))
    return sorted(found)


def choose(mults):
    """{arm: the rate whose mean validation metric over the pairs is highest} (only rates with every pair)."""
    best = {}
    for arm in args.arms:
        means = {m: statistics.mean(c.values()) for m in mults if len(c := curve(arm, m, VALID)) == len(PAIRS)}
        if means:
            best[arm] = max(means, key=means.get)
    return best

# --------------------------------------------------------------------------------------------------
# 0) Warm starts, 1) the grid, grown until no arm's best is at its top
# --------------------------------------------------------------------------------------------------


began = time.time()
mults = sorted(set(args.mults))
if not args.skip_training:
    todo = [(f"warm start v3 {w}", [sys.executable, "models/tiny.py", "--task", "visualmath-v3", "--seed", str(w),
                                    "--out", warm_dir(w)], warm_dir(w) + ".txt")
            for w in args.warm_seeds if not tiny.is_built(warm_dir(w))]
    trials.run_all(todo, args.jobs)
    missing = [w for w in args.warm_seeds if not tiny.is_built(warm_dir(w))]
    if missing:
        sys.exit(f"experiments/lr.py: the warm starts {missing} did not build; see {warm_dir(missing[0])}.txt")
    run_grid(mults)
    while (best := choose(mults)) and max(best.values()) == mults[-1] and mults[-1] * 2 <= args.max_mult:
        print(f"{[a for a, m in best.items() if m == mults[-1]]} chose the top rate {mults[-1]:g}x: "
              f"the grid grows to {2 * mults[-1]:g}x", flush=True)
        mults.append(2 * mults[-1])
        run_grid(mults)
mults = mults_on_disk()
best = choose(mults)
minutes = (time.time() - began) / 60

# --------------------------------------------------------------------------------------------------
# 2) The tables: every (arm, lr); the tuned comparison; why
# --------------------------------------------------------------------------------------------------


def mean_ci(values):
    if not values:
        return "-"
    mean, half = trials.interval(list(values))
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def step_means(arm, mult, key):
    """Mean over the pairs' runs of a per-step logged value (update_norm, push_<class>, clip_frac)."""
    values = [rec[key] for w, r in PAIRS for rec in records(arm, mult, w, r) if key in rec]
    return statistics.mean(values) if values else None


def fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


PUSH = ("perception", "filler", "grounded", "arithmetic", "copy", "other")  # fork: only on the fork control
grid_rows = ["| arm | lr | validation avg@4 [95% CI] | test avg@4 [95% CI] | update norm | push: "
             + " / ".join(PUSH) + " | clip |", "|---|---|---|---|---|---|---|"]
for arm in args.arms:
    for m in mults:
        valid, test = curve(arm, m, VALID), curve(arm, m, TEST)
        if not valid:
            continue
        push = " / ".join(fmt(step_means(arm, m, f"push_{c}"), ".2f") for c in PUSH)
        mark = " **chosen**" if best.get(arm) == m else ""
        grid_rows.append(f"| {arm} | {m:g}x{mark} | {mean_ci(valid.values())} | {mean_ci(test.values())} | "
                         f"{fmt(step_means(arm, m, 'update_norm'), '.4f')} | {push} | "
                         f"{fmt(step_means(arm, m, 'clip_frac'))} |")

contrasts = []  # (arm, diffs, greedy diffs) at each one's chosen rate against uniform at its own
if BASE in best:
    base_t, base_g = curve(BASE, best[BASE], TEST), curve(BASE, best[BASE], "test_accuracy")
    for arm in args.arms:
        if arm != BASE and arm in best:
            t, g = curve(arm, best[arm], TEST), curve(arm, best[arm], "test_accuracy")
            diffs = [t[p] - base_t[p] for p in PAIRS if p in t and p in base_t]
            contrasts.append((arm, diffs, [g[p] - base_g[p] for p in PAIRS if p in g and p in base_g]))
adjusted = trials.holm([trials.paired_p(d) for _, d, _ in contrasts])
tuned_rows = ["| arm (chosen lr) vs uniform (" + (f"{best[BASE]:g}x" if BASE in best else "-") + ") | test avg@4 "
              "difference [95% CI] | pairs above | p | Holm p | test greedy difference [95% CI] |",
              "|---|---|---|---|---|---|"]
verdicts = []
for (arm, diffs, gdiffs), p_holm in zip(contrasts, adjusted):
    if len(diffs) < 2:
        continue
    mean, half = trials.interval(diffs)
    gm, gh = trials.interval(gdiffs) if len(gdiffs) >= 2 else (float("nan"), float("nan"))
    tuned_rows.append(f"| {arm} ({best[arm]:g}x) | {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | "
                      f"{sum(d > 0 for d in diffs)}/{len(diffs)} | {trials.paired_p(diffs):.3f} | {p_holm:.3f} | "
                      f"{gm:+.3f} [{gm - gh:+.3f}, {gm + gh:+.3f}] |")
    if mean - half > 0 and p_holm < 0.05:
        word = "beats uniform at uniform's own best rate"
    elif mean + half < 0 and p_holm < 0.05:
        word = "falls behind uniform at uniform's own best rate"
    else:
        word = "is not told apart from uniform at uniform's own best rate"
    verdicts.append(f"- **{arm}** (best at {best[arm]:g}x on validation) {word}: {mean:+.3f} "
                    f"[{mean - half:+.3f}, {mean + half:+.3f}] test avg@4, Holm p {p_holm:.3f}, above on "
                    f"{sum(d > 0 for d in diffs)} of {len(diffs)} pairs.")

# --------------------------------------------------------------------------------------------------
# 3) The figure: metric vs learning rate per arm, validation and test, 95% intervals over the pairs
# --------------------------------------------------------------------------------------------------

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
for ax, (key, title) in zip(axes, ((VALID, "validation (chooses the rate)"), (TEST, "test (compares the arms)"))):
    for i, arm in enumerate(args.arms):
        points = [(m, trials.interval(list(c.values()))) for m in mults if (c := curve(arm, m, key))]
        if not points:
            continue
        x = [m * 2 ** ((i - len(args.arms) / 2) * 0.03) for m, _ in points]  # arms side by side at each rate
        y = [mean for _, (mean, _) in points]
        half = [0 if math.isnan(h) else h for _, (_, h) in points]
        err = [[min(h, v) for h, v in zip(half, y)], [min(h, 1 - v) for h, v in zip(half, y)]]  # avg@4 is in [0, 1]
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=arm)
        if arm in best and key == VALID:
            ax.plot([best[arm]], [statistics.mean(curve(arm, best[arm], key).values())], "k*", ms=10)
    ax.set(xscale="log", title=title, xlabel="learning rate (x 1e-4)", ylim=(0, 1.02))
    ax.set_xticks(mults, [f"{m:g}x" for m in mults])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
axes[0].set_ylabel("avg@4, mean over the curve (95% CI, cut at 0 and 1)")
axes[0].legend(fontsize=8)
fig.tight_layout()
os.makedirs(args.out, exist_ok=True)
fig.savefig(os.path.join(args.out, "lr_curves.png"), dpi=110)

# --------------------------------------------------------------------------------------------------
# 4) The summary
# --------------------------------------------------------------------------------------------------

n_runs = sum(1 for a in args.arms for m in mults for w, r in PAIRS if records(a, m, w, r))
expected = len(args.arms) * len(mults) * len(PAIRS)
warm = {w: json.load(open(os.path.join(warm_dir(w), "sft_report.json"))) for w in args.warm_seeds
        if os.path.exists(os.path.join(warm_dir(w), "sft_report.json"))}
lines = ["# Credit or step size? Every arm at its own best learning rate (VisualMath v3)", "",
         f"Command: `python experiments/lr.py {' '.join(sys.argv[1:])}`" +
         (f" ({minutes:.0f} min this invocation)" if not args.skip_training else " -- tables from the logs on disk"), "",
         f"Design (fixed in experiments/lr.py before any run): arms {', '.join(args.arms)}; learning rates "
         f"{', '.join(f'{m:g}' for m in mults)} x {args.lr:g}; warm starts {args.warm_seeds} (models/tiny.py --task "
         f"visualmath-v3) x RL seeds {args.rl_seeds} = {len(PAIRS)} pairs; {args.steps} steps, evaluation every "
         f"{args.eval_every} on {args.eval_size} validation and {args.test_size} test questions (avg@4 at temperature "
         "1, averaged over the evaluations after RL began). Each arm's rate is chosen on validation; arms are "
         "compared on test, paired, with 95% t-intervals and Holm's correction over the arms.", "",
         f"Runs finished: {n_runs} of {expected}." + ("" if n_runs == expected else " **Incomplete**: the tables "
                                                       "use the pairs that finished."), "",
         "Warm starts, as built (held-out greedy accuracy / avg@4, n = 256): " + ", ".join(
             f"{w}: {rep['held_out']['accuracy']:.3f} / {rep['held_out']['avg@4']:.3f}" for w, rep in warm.items()), "",
         "## The verdict, per arm", "", *(verdicts or ["(not enough finished pairs yet)"]), "",
         "## Each arm at its chosen rate against uniform at its chosen rate (test questions)", "", *tuned_rows, "",
         "## Every arm at every rate", "",
         "Validation and test metric: mean over the pairs with its 95% t-interval; update norm = mean ||dW|| per "
         "step; push = each token class's share of sum |A_AT| (1 - pi(y)) (means over steps and pairs; "
         f"classes as tasks/chains.py reads them: {', '.join(chains.CLASSES)}).", "", *grid_rows, "",
         "![metric vs learning rate](lr_curves.png)", ""]
with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines))
