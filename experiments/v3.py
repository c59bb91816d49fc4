"""experiments/v3.py -- does AT-RL work where credit is diluted? VisualMath v3, in gates, with controls that say why.

On v2 the warm start's uncertainty sits on the perception tokens, so GRPO already puts 84-97% of its update there
and no selector has noise to remove (experiments/results/v2/summary.md). v3 (tasks/chains.py) writes the same grid's answer inside a
chain shaped like a real one: free-form filler chosen at random, a useless shape description, copies and sums.
Every token's class is known, which allows oracle arms, and the test runs in gates so that compute is spent only
where the previous gate says there is something to find:

  Gate 0  (no RL) is there dilution? Per token class of the warm start's own samples: share, entropy, image
          density rho, VPPO's visual dependency, what each selector picks; and the policy gradient of each class
          over many rollout batches at fixed weights (the class's loss -sum_{t in c} A_i log pi(y_t) / N_tokens):
            noise_c  = tr Cov_k(g_c,k)                       (how much of the batch-to-batch scatter it carries)
            signal_c = mean_k <g_c,k, d>,  d = E[g_all] / |E[g_all]| from separate batches (the useful direction)
          PASS if the filler and descriptions (chains.NOISE) carry >= half of uniform's noise (masking them leaves
          <= half) and their signal's 95% interval holds 0, on every v3 warm start.
  Gate 1  (RL, the positive control) can perfect selection use it? oracle (mask NOISE, perception x gain),
          oracle_mask, oracle_up, random_mask (as many tokens masked at random) and uniform at 0.5x, 1x, 2x the
          learning rate, on v3; uniform and oracle (and uniform 2x) on v3-fixed (same chain, filler fixed: no noise).
          PASS ("a dilution effect") if oracle - uniform >= +0.03 with its 95% interval above 0 on v3 AND
          |oracle - uniform| < 0.03 on v3-fixed (roughly a tie); else "no dilution effect at this scale": stop.
  Main    (only after Gate 1 passes) uniform, oracle, atrl at gain 2 and 4, tokens, vppo, entropy, random at the
          learning rate Gate 1 chose (the best uniform), >= 12 pairs fixed before the run. Primary: atrl - uniform,
          atrl - vppo, atrl - entropy, Holm-corrected (3 contrasts) with Bonferroni 95% intervals. Secondary:
          captured fraction of the oracle's gain, realised W per class, clip rate, filler-entropy drift.

Metric of every comparison (as v2): held-out avg@4 averaged over the evaluations after RL began (the area under
the curve), paired by (warm start, RL seed) with experiments/trials.py's t-intervals; greedy accuracy is reported beside it.

Run (warm starts build into <out>/warm/ once; finished runs are skipped, so an interrupted run continues):
    python experiments/v3.py                      # gate 0, then gate 1 if it passes, then main if that passes
    python experiments/v3.py --stop_after gate0   # the cheap gate only
    python experiments/v3.py --force_gate1 --stop_after gate1   # the positive control even where gate 0 failed
    python experiments/v3.py --quick              # 1 warm start, 1 RL seed, 10 steps, few batches: the shape, minutes
    python experiments/v3.py --skip_training      # every table again from <out>/runs/*/log.jsonl and <out>/gate0/*.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

if __package__ in (None, ""):  # run as `python experiments/v3.py`: the repository root, not experiments/, heads the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import eval as eval_py  # model loading, train.py logs
import rollout
from experiments import dilution  # gate 0's measurement
from experiments import trials
from models import tiny
from tasks import chains, visualmath

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="", help="runs and tables (default experiments/results/v3, experiments/results/v3-quick with --quick)")
parser.add_argument("--warm_seeds", nargs="+", type=int, default=[0, 1, 2], help="models/tiny.py --seed of each warm start")
parser.add_argument("--rl_seeds", nargs="+", type=int, default=[0, 1], help="train.py --seed, gate 1 (pairs: x warm)")
parser.add_argument("--main_rl_seeds", nargs="+", type=int, default=[0, 1, 2, 3], help="train.py --seed, main (>= 12 pairs)")
parser.add_argument("--steps", type=int, default=20, help="RL steps per run")
parser.add_argument("--eval_every", type=int, default=5)
parser.add_argument("--eval_size", type=int, default=256, help="held-out questions per evaluation")
parser.add_argument("--lr", type=float, default=1e-4, help="the 1x learning rate (train.py's default)")
parser.add_argument("--max_new_tokens", type=int, default=96, help="v3 answers are ~53 tokens")
parser.add_argument("--snr_batches", type=int, default=24, help="gate 0: rollout batches (a third set the direction)")
parser.add_argument("--census_batches", type=int, default=4, help="gate 0: batches behind the per-class census")
parser.add_argument("--jobs", type=int, default=2, help="builds / runs / measurements in parallel (one thread each)")
parser.add_argument("--stop_after", default="main", choices=["gate0", "gate1", "main"])
parser.add_argument("--force_gate1", action="store_true", help="run gate 1 even where gate 0 failed: the positive "
                    "control says whether an oracle can use what dilution there is (the main comparison stays gated)")
parser.add_argument("--quick", action="store_true", help="1 warm start, 1 RL seed, 10 steps: the shape in minutes")
parser.add_argument("--skip_training", action="store_true", help="tables from what is on disk; start nothing")
parser.add_argument("--measure", nargs=2, metavar=("WARM_DIR", "TASK"), help=argparse.SUPPRESS)  # gate 0 of one warm start
args = parser.parse_args()
if args.quick:
    args.warm_seeds, args.rl_seeds, args.main_rl_seeds, args.steps = args.warm_seeds[:1], [0], [0], 10
    args.snr_batches, args.census_batches, args.eval_size = 9, 2, 64
args.out = args.out or ("experiments/results/v3-quick" if args.quick else "experiments/results/v3")
torch.set_num_threads(1)
TASKS = {"v3": "visualmath-v3", "fixed": "visualmath-v3-fixed", "fork": "visualmath-v3-fork"}
G, P = 8, 16  # train.py's group size and prompts per step: gate 0 measures the batches RL would see

if args.measure:  # gate 0 of one warm start (experiments/dilution.py), as its own process so that two run side by side
    os.makedirs(os.path.join(args.out, "gate0"), exist_ok=True)
    result = dilution.measure(*args.measure, args.snr_batches, args.census_batches, args.max_new_tokens, P, G)
    json.dump(result, open(os.path.join(args.out, "gate0", os.path.basename(args.measure[0]) + ".json"), "w"), indent=1)
    sys.exit(0)

# --------------------------------------------------------------------------------------------------
# The grid: warm starts, runs, their names
# --------------------------------------------------------------------------------------------------


def warm_dir(task, seed):
    return os.path.join(args.out, "warm", f"{task}-{seed}")


def run_name(task, arm, gain=2.0, lr_mult=1.0):
    return f"{task}-{arm}" + (f"-gain{gain:g}" if gain != 2.0 else "") + (f"-lr{lr_mult:g}x" if lr_mult != 1.0 else "")


def run_dir(spec, w, r):
    return os.path.join(args.out, "runs", f"{run_name(*spec)}-w{w}-r{r}")


def train_job(spec, w, r):
    task, arm, gain, lr_mult = spec
    out = run_dir(spec, w, r)
    return (f"{run_name(*spec)} w{w} r{r}",
            [sys.executable, "train.py", "--model", warm_dir(task, w), "--dataset", TASKS[task], "--seed", str(r),
             "--weighting", arm, "--gain", str(gain), "--lr", str(args.lr * lr_mult), "--steps", str(args.steps),
             "--eval_every", str(args.eval_every), "--eval_size", str(args.eval_size), "--max_new_tokens",
             str(args.max_new_tokens), "--out_dir", out, "--overwrite", "1", "--keep_checkpoints", "1"], out + ".txt")


def run_grid(specs, warm_seeds, rl_seeds):
    """Every (arm, pair) run not finished yet, pair by pair: a grid stopped part-way leaves whole pairs behind."""
    jobs = [train_job(s, w, r) for w in warm_seeds for r in rl_seeds for s in specs
            if not trials.finished(run_dir(s, w, r), args.steps)]
    print(f"{len(jobs)} runs to do ({len(specs) * len(warm_seeds) * len(rl_seeds) - len(jobs)} finished)", flush=True)
    started.extend(trials.run_all(jobs, args.jobs))


def records(spec, w, r):
    path = os.path.join(run_dir(spec, w, r), "log.jsonl")
    return eval_py.read_log(path)[1] if trials.finished(run_dir(spec, w, r), args.steps) else []


def paired(a, b, pairs, key="eval_avg@4"):
    """Differences of curve means, arm a - arm b, over the pairs where both runs finished."""
    out = []
    for w, r in pairs:
        x, y = trials.curve_mean(records(a, w, r), key), trials.curve_mean(records(b, w, r), key)
        if x is not None and y is not None:
            out.append(x - y)
    return out


def fmt(diffs, alpha=0.05):
    if len(diffs) < 2:
        return "-", "-"
    mean, half = trials.interval(diffs, alpha)
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]", f"{sum(d > 0 for d in diffs)}/{len(diffs)}"


def arm_table(specs, pairs, base):
    """Markdown rows: per arm its start, curve mean and end of avg@4 and greedy, and the paired difference to base."""
    lines = ["| run | avg@4 start -> end | avg@4 curve | vs " + run_name(*base) + " [95% CI] | above | greedy curve "
             "| vs [95% CI] | clip | W perception / filler / grounded |", "|---|---|---|---|---|---|---|---|---|"]
    for s in specs:
        recs = [records(s, w, r) for w, r in pairs]
        recs = [x for x in recs if x]
        if not recs:
            continue
        start = statistics.mean(trials.evals(x, "eval_avg@4")[0][1] for x in recs)
        end = statistics.mean(trials.evals(x, "eval_avg@4")[-1][1] for x in recs)
        curve = statistics.mean(trials.curve_mean(x, "eval_avg@4") for x in recs)
        greedy = statistics.mean(trials.curve_mean(x, "eval_accuracy") for x in recs)
        clip = statistics.mean(r["clip_frac"] for x in recs for r in x if "clip_frac" in r)
        w = {c: [r[f"w_{c}"] for x in recs for r in x if f"w_{c}" in r] for c in ("perception", "filler", "grounded")}
        wtxt = " / ".join(f"{statistics.mean(v):.2f}" if v else "-" for v in w.values())
        d, above = fmt(paired(s, base, pairs)) if s != base else ("-", "-")
        dg, _ = fmt(paired(s, base, pairs, "eval_accuracy")) if s != base else ("-", "-")
        lines.append(f"| {run_name(*s)} | {start:.3f} -> {end:.3f} | {curve:.3f} | {d} | {above} | {greedy:.3f} | {dg} "
                     f"| {clip:.3f} | {wtxt} |")
    return lines

# --------------------------------------------------------------------------------------------------
# 0) Warm starts; Gate 0
# --------------------------------------------------------------------------------------------------

began, started = time.time(), []  # started: the jobs this invocation ran (none: every table from disk)
os.makedirs(os.path.join(args.out, "gate0"), exist_ok=True)


def build(pairs):
    """models/tiny.py --task ... for each (task, warm seed), skipping finished builds (models/tiny.py skips them itself too)."""
    jobs = [(f"warm start {t} {w}", [sys.executable, "models/tiny.py", "--task", TASKS[t], "--seed", str(w), "--out",
                                     warm_dir(t, w)], warm_dir(t, w) + ".txt")
            for t, w in pairs if not tiny.is_built(warm_dir(t, w))]
    started.extend(trials.run_all(jobs, args.jobs))


# gate 0 measures every v3 warm start, and the first warm start of the two controls (not gated)
measured = [("v3", w) for w in args.warm_seeds] + [("fixed", args.warm_seeds[0]), ("fork", args.warm_seeds[0])]
if not args.skip_training:
    unmeasured = [(t, w) for t, w in measured if not os.path.exists(os.path.join(args.out, "gate0", f"{t}-{w}.json"))]
    build(unmeasured)  # a warm start already measured is not rebuilt: gate 0 reads it no more
    jobs = [(f"gate 0 {t} {w}", [sys.executable, "experiments/v3.py", "--out", args.out, "--snr_batches",
                                 str(args.snr_batches), "--census_batches", str(args.census_batches), "--max_new_tokens",
                                 str(args.max_new_tokens), "--measure", warm_dir(t, w), TASKS[t]],
             os.path.join(args.out, "gate0", f"{t}-{w}.txt")) for t, w in unmeasured]
    started.extend(trials.run_all(jobs, args.jobs))
gate0 = {f[:-5]: json.load(open(os.path.join(args.out, "gate0", f))) for f in sorted(os.listdir(os.path.join(args.out, "gate0")))
         if f.endswith(".json")}


def gate0_verdict(m):
    """(passes, noise share of chains.NOISE, 1 - noise left after masking it, signal of NOISE vs uniform's)."""
    snr = m["snr"]
    share = (snr["filler"]["noise"] + snr["grounded"]["noise"]) / snr["all"]["noise"]
    removed = 1 - snr["kept"]["noise"] / snr["all"]["noise"]
    lo, hi = snr["noise"]["signal_ci"]
    return removed >= 0.5 and lo <= 0 <= hi, share, removed, snr["noise"]["signal"] / snr["all"]["signal"]


v3_measured = [k for k in gate0 if k.startswith("v3-")]
gate0_pass = bool(v3_measured) and all(gate0_verdict(gate0[k])[0] for k in v3_measured)

# --------------------------------------------------------------------------------------------------
# 1) Gate 1: the oracle arms and the learning-rate sweep, with filler (v3) and without (v3-fixed)
# --------------------------------------------------------------------------------------------------

G1_V3 = [("v3", "uniform", 2.0, 1.0), ("v3", "uniform", 2.0, 0.5), ("v3", "uniform", 2.0, 2.0), ("v3", "oracle", 2.0, 1.0),
         ("v3", "oracle_mask", 2.0, 1.0), ("v3", "oracle_up", 2.0, 1.0), ("v3", "random_mask", 2.0, 1.0)]
G1_FIXED = [("fixed", "uniform", 2.0, 1.0), ("fixed", "oracle", 2.0, 1.0), ("fixed", "uniform", 2.0, 2.0)]
VERDICT = [G1_V3[0], G1_V3[3], G1_FIXED[0], G1_FIXED[1]]  # the four arms gate 1's verdict reads
pairs1 = [(w, r) for w in args.warm_seeds for r in args.rl_seeds]
gate1_pass, best_lr = None, 1.0
if gate0_pass or args.force_gate1 or args.skip_training:
    if args.stop_after != "gate0" and not args.skip_training:
        build([(t, w) for t in ("v3", "fixed") for w in args.warm_seeds])
        run_grid(VERDICT, args.warm_seeds, args.rl_seeds)  # the verdict first, then the controls that explain it
        run_grid([s for s in G1_V3 + G1_FIXED if s not in VERDICT], args.warm_seeds, args.rl_seeds)
    d_v3, d_fixed = paired(G1_V3[3], G1_V3[0], pairs1), paired(G1_FIXED[1], G1_FIXED[0], pairs1)
    if len(d_v3) >= 2 and len(d_fixed) >= 2:
        (m3, h3), (mf, _) = trials.interval(d_v3), trials.interval(d_fixed)
        gate1_pass = m3 >= 0.03 and m3 - h3 > 0 and abs(mf) < 0.03
        curves = {s[3]: [trials.curve_mean(records(s, w, r), "eval_avg@4") for w, r in pairs1] for s in G1_V3[:3]}
        best_lr = max(curves, key=lambda m: statistics.mean(v for v in curves[m] if v is not None))

# --------------------------------------------------------------------------------------------------
# 2) The main comparison (only after gate 1 passes)
# --------------------------------------------------------------------------------------------------

MAIN = [("v3", arm, gain, best_lr) for arm, gain in (("uniform", 2.0), ("oracle", 2.0), ("atrl", 2.0), ("atrl", 4.0),
                                                     ("tokens", 2.0), ("vppo", 2.0), ("entropy", 2.0), ("random", 2.0))]
pairs2 = [(w, r) for w in args.warm_seeds for r in args.main_rl_seeds]
if gate0_pass and gate1_pass and args.stop_after == "main" and not args.skip_training:
    run_grid(MAIN, args.warm_seeds, args.main_rl_seeds)
minutes = (time.time() - began) / 60

# --------------------------------------------------------------------------------------------------
# 3) Filler-entropy drift: per-class entropy of each run's last checkpoint on reference chains
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def class_entropy(path, task, n=64):
    """{class: mean entropy (nats)} of the model at `path` on n teacher-forced reference chains (held-out rows)."""
    model, tokenizer, image_processor = eval_py.load_model(path, torch.device("cpu"), "float32")
    rows = list(visualmath.make(task, n, seed=20_000))
    batch = rollout.sft_batch(tokenizer, image_processor, rows)
    labelled = batch.pop("labels") != -100                                               # (B, S) response tokens
    P = int(labelled.float().argmax(1).min())
    batch["response_mask"] = labelled[:, P:]
    _, entropy = rollout.token_logprobs(model, batch, P)                                 # (B, T)
    classes = chains.label_batch(tokenizer, dict(batch, prompt_len=P))
    return chains.class_means(entropy, batch["response_mask"], classes, prefix="")


drift_path = os.path.join(args.out, "drift.json")
drift = json.load(open(drift_path)) if os.path.exists(drift_path) else {}
for spec in G1_V3 + G1_FIXED + MAIN:
    for w, r in set(pairs1) | set(pairs2):
        name, ckpt = os.path.basename(run_dir(spec, w, r)), os.path.join(run_dir(spec, w, r), f"checkpoint-{args.steps}")
        if name not in drift and os.path.isdir(ckpt):
            drift[name] = class_entropy(ckpt, TASKS[spec[0]])
        if name in drift and f"warm-{spec[0]}-{w}" not in drift and os.path.isdir(warm_dir(spec[0], w)):
            drift[f"warm-{spec[0]}-{w}"] = class_entropy(warm_dir(spec[0], w), TASKS[spec[0]])
if drift:
    json.dump(drift, open(drift_path, "w"), indent=1)


def drift_of(spec, pairs, cls="filler"):
    """Mean change of `cls`'s entropy from the warm start to the end of the run, over the pairs (None if unknown)."""
    d = [drift[os.path.basename(run_dir(spec, w, r))][cls] - drift[f"warm-{spec[0]}-{w}"][cls] for w, r in pairs
         if os.path.basename(run_dir(spec, w, r)) in drift and cls in drift.get(f"warm-{spec[0]}-{w}", {})]
    return f"{statistics.mean(d):+.3f}" if d else "-"

# --------------------------------------------------------------------------------------------------
# 4) summary.md and curves
# --------------------------------------------------------------------------------------------------

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(specs, pairs, path, title):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key in zip(axes, ("eval_accuracy", "eval_avg@4")):
        for s in specs:
            curves = [dict(trials.evals(records(s, w, r), key)) for w, r in pairs]
            curves = [c for c in curves if c]
            if curves:
                xs = sorted(set.intersection(*(set(c) for c in curves)))
                ax.plot(xs, [statistics.mean(c[x] for c in curves) for x in xs], marker="o", ms=3, label=run_name(*s))
        ax.set_title(f"{title}: held-out {key[5:]} (mean over pairs)", fontsize=9)
        ax.set_xlabel("RL step")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout(); fig.savefig(path, dpi=120); plt.close(fig)


def census_table(keys):
    """Per class, mean over the measured warm starts `keys`: the census of their own samples and the class's
    share of uniform's gradient noise and of its signal (with the signal's interval, as a share too)."""
    def mean(get):
        return statistics.mean(get(gate0[k]) for k in keys)
    rows = ["| class | share | entropy (nats) | >0.5 nats (share of all tokens) | rho | VPPO dependency | anchors "
            "| entropy top 20% | VPPO top 40% | atrl W (gain 2 / 4) | gradient noise | signal [95% CI] |",
            "|---|" + "---|" * 11]
    for name in [*chains.CLASSES, "noise", "derailed"]:
        if name in chains.CLASSES and not all(name in gate0[k]["census"]["classes"] for k in keys):
            continue
        if name not in chains.CLASSES:
            cells = ["filler + grounded" if name == "noise" else "derailed samples (any class)", *["-"] * 9]
        else:
            c = lambda key: mean(lambda m: m["census"]["classes"][name][key])  # noqa: E731
            cells = [name, f"{c('share'):.3f}", f"{c('entropy'):.3f}", f"{c('high_entropy_share'):.3f}",
                     f"{c('rho'):.3f}", f"{c('dependency'):.3f}", f"{c('picked_anchor'):.2f}",
                     f"{c('picked_entropy_top'):.2f}", f"{c('picked_vppo_top'):.2f}",
                     f"{c('w_atrl2'):.2f} / {c('w_atrl4'):.2f}"]
        share = lambda get: mean(lambda m: get(m["snr"][name]) / get(m["snr"]["all"]))  # noqa: E731
        lo = mean(lambda m: m["snr"][name]["signal_ci"][0] / m["snr"]["all"]["signal"])
        hi = mean(lambda m: m["snr"][name]["signal_ci"][1] / m["snr"]["all"]["signal"])
        cells += [f"{share(lambda x: x['noise']):.1%}", f"{share(lambda x: x['signal']):+.1%} [{lo:+.0%}, {hi:+.0%}]"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


# the warm starts' reports, read after every build (gate 1 builds the fixed ones)
sft = {f"{t}-{w}": json.load(open(os.path.join(warm_dir(t, w), "sft_report.json"))) for t in ("v3", "fixed", "fork")
       for w in args.warm_seeds if os.path.exists(os.path.join(warm_dir(t, w), "sft_report.json"))}

lines = ["# Does AT-RL work where credit is diluted? VisualMath v3", "",
         f"Command: `python experiments/v3.py {' '.join(sys.argv[1:])}`"
         + (f"; wall time {minutes:.0f} min." if started else " -- every build, measurement and run was on disk: "
            "tables only (README: what each took)."), "",
         f"Fixed before any run: warm starts {args.warm_seeds} per task (models/tiny.py --task ...), gate 1 RL seeds "
         f"{args.rl_seeds} ({len(pairs1)} pairs), main RL seeds {args.main_rl_seeds} ({len(pairs2)} pairs), {args.steps} "
         f"steps, evaluation every {args.eval_every} steps on {args.eval_size} held-out questions (greedy, avg@4 at "
         f"temperature 1), 1x learning rate {args.lr:g}; gate 0 on {args.snr_batches} rollout batches of {P} x {G} "
         f"(the first {args.snr_batches // 3} set the signal direction). Metric: avg@4 averaged over the evaluations "
         "after RL began, paired by (warm start, RL seed); intervals 95% Student-t over the pairs.", "",
         "## Warm starts", "", "| warm start | greedy | avg@4 | read right (greedy / sampled) | lucky (sampled) |",
         "|---|---|---|---|---|"]
for key, rep in sft.items():
    h = rep["held_out"]
    lines.append(f"| {key} | {h['accuracy']:.3f} | {h['avg@4']:.3f} | {h['read']:.2f} / {h['read@4']:.2f} | "
                 f"{h['lucky@4']:.1%} |")
lines += ["", "## Gate 0: is there dilution? (no RL)", ""]
if v3_measured:
    lines += [f"Per token class of the v3 warm starts' own samples (mean over {', '.join(v3_measured)}; "
              f"{gate0[v3_measured[0]]['census']['tokens']} tokens each); 'anchors' etc. = share of the class each "
              "selector picks; gradient noise = the class's share of tr Cov of uniform's gradient, signal = its share "
              "of uniform's projection on the useful direction:", "", *census_table(v3_measured), ""]
    for k in sorted(gate0, key=lambda k: (not k.startswith("v3-"), k)):  # the gated warm starts first
        ok, share, removed, sig = gate0_verdict(gate0[k])
        ap, snr = gate0[k]["census"]["anchor_precision"], gate0[k]["snr"]
        trunk = 1 - snr["kept"]["noise_trunk"] / snr["all"]["noise_trunk"]
        clean = 1 - snr["kept_clean"]["noise"] / snr["clean"]["noise"]
        lines.append(f"- {k}: filler + grounded carry {share:.1%} of uniform's noise on their own; masking them "
                     f"removes {removed:.1%} of it ({trunk:.1%} on the trunk without the embedding matrix; "
                     f"{clean:.1%} of the noise of the {1 - gate0[k]['derailed_share']:.0%} of samples that stay on "
                     f"the grammar, while the {gate0[k]['derailed_share']:.1%} that derail carry "
                     f"{snr['derailed']['noise'] / snr['all']['noise']:.0%} of all noise); "
                     f"their signal is {sig:+.1%} of uniform's (95% CI "
                     f"[{gate0[k]['snr']['noise']['signal_ci'][0] / gate0[k]['snr']['all']['signal']:+.0%}, "
                     f"{gate0[k]['snr']['noise']['signal_ci'][1] / gate0[k]['snr']['all']['signal']:+.0%}]); tokens "
                     f"below 0.01 nats {gate0[k]['census']['low_entropy_share']:.1%}, above 0.5 "
                     f"{gate0[k]['census']['high_entropy_share']:.1%}; AT-RL's anchors (15% of tokens) are perception "
                     f"tokens {ap['perception']:.0%} of the time, grounded ones (perception or description) "
                     f"{ap['grounded']:.0%}" + ("" if k.startswith("v3") else " (control, not gated)"))
    lines += ["", f"**Gate 0: {'PASS' if gate0_pass else 'FAIL'}** (needs, on every v3 warm start: masking filler + "
              "grounded removes >= 50% of uniform's gradient noise, and their signal's interval holds 0)."]
    for k in (k for k in gate0 if not k.startswith("v3-")):
        lines += ["", f"Control {k} ({gate0[k]['task']}, not gated):", "", *census_table([k])]
lines += ["", "## Gate 1: can perfect selection use it? (the positive control)", ""]
if gate1_pass is None:
    lines.append("Not run: gate 0 failed, so there is no dilution for an oracle to use." if not gate0_pass else "Not run yet.")
else:
    plot(G1_V3 + G1_FIXED, pairs1, os.path.join(args.out, "gate1_curves.png"), "gate 1")
    done = sum(bool(records(s, w, r)) for s in G1_V3 + G1_FIXED for w, r in pairs1)
    if not gate0_pass:
        lines += ["Run although gate 0 failed (`--force_gate1`): the positive control says whether perfect selection "
                  "can use what dilution v3 has; the main comparison stays gated on gate 0.", ""]
    if done < len(G1_V3 + G1_FIXED) * len(pairs1):
        lines += [f"**Incomplete: {done} of {len(G1_V3 + G1_FIXED) * len(pairs1)} runs finished** (the verdict's "
                  "four arms first, pair by pair; `python experiments/v3.py --force_gate1` continues where it stopped).", ""]
    lines += ["With filler (v3), every run against uniform at 1x:", "", *arm_table(G1_V3, pairs1, G1_V3[0]), "",
              "Without filler noise (v3-fixed):", "", *arm_table(G1_FIXED, pairs1, G1_FIXED[0]), "",
              f"- oracle - uniform: v3 {fmt(d_v3)[0]} ({fmt(d_v3)[1]} pairs above), v3-fixed {fmt(d_fixed)[0]}; "
              f"with filler minus without (paired by index) {fmt([a - b for a, b in zip(d_v3, d_fixed)])[0]}",
              f"- step size: oracle at 1x - uniform at 2x {fmt(paired(G1_V3[3], G1_V3[2], pairs1))[0]}; the best uniform "
              f"learning rate is {best_lr:g}x",
              f"- which tokens, or how many: oracle_mask - random_mask {fmt(paired(G1_V3[4], G1_V3[6], pairs1))[0]}",
              "- filler entropy drift (warm start -> end): " + ", ".join(
                  f"{run_name(*s)} {drift_of(s, pairs1)}" for s in G1_V3), "",
              f"**Gate 1: {'PASS: a dilution effect' if gate1_pass else 'FAIL: no dilution effect at this scale'}** "
              "(needs oracle - uniform >= +0.03 with its interval above 0 on v3, and |oracle - uniform| < 0.03 on "
              "v3-fixed).", "", "![gate 1](gate1_curves.png)"]
lines += ["", "## The main comparison", ""]
main_done = [s for s in MAIN if any(records(s, w, r) for w, r in pairs2)]
if not gate1_pass or not main_done:
    lines.append("Not run: gate 1 did not pass." if gate1_pass is False else
                 "Not run: gate 0 failed." if not gate0_pass else "Not run yet.")
else:
    plot(MAIN, pairs2, os.path.join(args.out, "main_curves.png"), "main")
    atrl_spec = MAIN[2]
    contrasts = [(atrl_spec, MAIN[0]), (atrl_spec, MAIN[5]), (atrl_spec, MAIN[6])]
    diffs = [paired(a, b, pairs2) for a, b in contrasts]
    adjusted = trials.holm([trials.paired_p(d) for d in diffs])
    oracle_gain = paired(MAIN[1], MAIN[0], pairs2)
    lines += [*arm_table(MAIN, pairs2, MAIN[0]), "", "Primary contrasts (Holm over 3, intervals Bonferroni 95%):", "",
              "| contrast | difference [CI] | pairs above | Holm p |", "|---|---|---|---|"]
    for (a, b), d, p in zip(contrasts, diffs, adjusted):
        lines.append(f"| {run_name(*a)} - {run_name(*b)} | {fmt(d, 0.05 / 3)[0]} | {fmt(d)[1]} | {p:.3f} |")
    lines += ["", "Captured fraction of the oracle's gain, (arm - uniform) / (oracle - uniform), means over pairs: " + ", ".join(
        f"{run_name(*s)} {statistics.mean(paired(s, MAIN[0], pairs2)) / statistics.mean(oracle_gain):.2f}"
        for s in MAIN[2:] if paired(s, MAIN[0], pairs2)) + ".", "",
        "Filler entropy drift: " + ", ".join(f"{run_name(*s)} {drift_of(s, pairs2)}" for s in MAIN) + ".", "",
        "![main](main_curves.png)"]
open(os.path.join(args.out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
