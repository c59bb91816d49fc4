"""experiments/v2.py -- does AT-RL work? The paper's claims and two peer token selectors, side by side on VisualMath v2.

On the warm-started tiny Qwen2.5-VL (models/tiny.py) and the grid task (tasks/visualmath.py), whose ground-truth
*perception* tokens (the digits read off the image) say which tokens truly need the image, we measure:

  C1  per-token connectivity rho is bimodal and ~15% of tokens sit in the upper mode ("anchors")
        -> Otsu split and bimodality coefficient of rho on reference responses           (density_hist.png)
  C2  under plain RLVR (`uniform`) credit concentrates on anchors
        -> share of the per-token update sum_t |log pi_after - log pi_before| on anchors vs their share of tokens
  C3  AT-RL beats its GRPO/DAPO base;  C4  training only low-connectivity tokens degrades
        -> every --weighting arm x warm-start seeds x RL seeds; held-out greedy accuracy and avg@4 at the end and
           averaged over the evaluations (the area under the curve: who learns faster); per arm the difference to
           `uniform` paired by (warm start, RL seed), mean and 95% t-interval                 (arms.json, curves.png)
  Q1  which attention row (--anchor_query) and layer band finds the perception tokens? precision / recall
  Q2  do the peer selectors find them? vppo's top 40% by visual dependency, entropy's top 20% by entropy
  Q3  lucky guesses (right answer, wrong reading) over training, per arm: does up-weighting perception tokens
      reinforce wrong readings more than uniform does?                                      (summary.md)

Where this departs from the paper: a 1M-parameter model, a synthetic task, minutes of training; the claims
are tested in kind, not in size. Q1/Q2 and C1/C2 use teacher-forced reference responses (their perception
tokens are known exactly); C2 compares each warm start with its first uniform run's last checkpoint.

Run (experiments/results/v2/ is rewritten -- --quick writes experiments/results/v2-quick/ instead, so it never replaces the full experiment;
warm starts are built into <out>/warm/ once and reused, and a run whose log holds its last evaluation is skipped,
so an interrupted experiment continues where it stopped: experiments/trials.py):
    python experiments/v2.py                  # 3 warm starts x 2 RL seeds x 8 arms, 20 steps each (README: wall time)
    python experiments/v2.py --quick          # 1 warm start x 2 RL seeds x 4 arms (uniform, atrl, vppo, entropy),
                                          # 10 steps: the shape of the answer in ~1/8 of the time, no C4 / ablations
    python experiments/v2.py --skip_training  # tables again from experiments/results/v2/runs/*/log.jsonl (analyses: from the stored
                                          # analysis.json when the warm starts are not on disk)
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

if __package__ in (None, ""):  # run as `python experiments/v2.py`: the repository root, not experiments/, heads the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import atrl
import connectivity
import eval as eval_py  # model loading and train.py logs
import rollout
from experiments import report  # token alignment, precision/recall, Otsu split, the teacher-forced batch
from experiments import trials  # the grid of runs (skipping finished ones), paired intervals
from tasks import visualmath

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--arms", nargs="+", default=[m for m in atrl.MODES if m not in atrl.CLASS_MODES],
                    help="--weighting arms (uniform first; the oracle arms need v3: experiments/v3.py)")
parser.add_argument("--warm_seeds", nargs="+", type=int, default=[0, 1, 2], help="models/tiny.py --seed of each warm start")
parser.add_argument("--rl_seeds", nargs="+", type=int, default=[0, 1], help="train.py --seed of each run")
parser.add_argument("--steps", type=int, default=20, help="RL steps per run (uniform leaves its start within 10)")
parser.add_argument("--eval_every", type=int, default=5)
parser.add_argument("--jobs", type=int, default=2, help="builds / runs in parallel (one thread each)")
parser.add_argument("--train_args", default="", help="extra train.py flags for every run")
parser.add_argument("--n_analysis", type=int, default=128, help="held-out questions behind C1, C2, Q1, Q2")
parser.add_argument("--out", default="", help="where runs and tables go (default: experiments/results/v2, or experiments/results/v2-quick with --quick)")
parser.add_argument("--quick", action="store_true", help="1 warm start, 4 arms, 10 steps (see the docstring)")
parser.add_argument("--skip_training", action="store_true")
args = parser.parse_args()
if args.quick:
    args.arms, args.warm_seeds, args.steps = ["uniform", "atrl", "vppo", "entropy"], args.warm_seeds[:1], 10
args.out = args.out or ("experiments/results/v2-quick" if args.quick else "experiments/results/v2")  # --quick never overwrites the full results
assert args.arms[0] == "uniform", "--arms must start with uniform: every other arm is compared with it"
os.makedirs(args.out, exist_ok=True)
torch.set_num_threads(1)


def warm_dir(seed):
    return os.path.join(args.out, "warm", f"seed-{seed}")


def run_dir(arm, warm, rl):
    return os.path.join(args.out, "runs", f"{arm}-w{warm}-r{rl}")



# --------------------------------------------------------------------------------------------------
# 1) Warm starts and training runs
# --------------------------------------------------------------------------------------------------


cells = [(arm, w, r) for arm in args.arms for w in args.warm_seeds for r in args.rl_seeds]
began = time.time()
if not args.skip_training:
    # models/tiny.py skips a finished build; a run whose log holds its last evaluation is skipped (trials.finished), so an
    # interrupted experiment continues where it stopped
    trials.run_all([(f"warm start {w}", [sys.executable, "models/tiny.py", "--seed", str(w), "--out", warm_dir(w)],
                     os.path.join(args.out, "warm", f"seed-{w}.txt")) for w in args.warm_seeds], args.jobs)
    trials.run_all([(f"{arm} warm {w} rl {r}",
                     [sys.executable, "train.py", "--model", warm_dir(w), "--seed", str(r), "--weighting", arm,
                      "--steps", str(args.steps), "--eval_every", str(args.eval_every), "--out_dir", run_dir(arm, w, r),
                      "--overwrite", "1", "--keep_checkpoints", "1", *args.train_args.split()],
                     os.path.join(run_dir(arm, w, r) + ".txt")) for arm, w, r in cells
                    if not trials.finished(run_dir(arm, w, r), args.steps)], args.jobs)
train_minutes = (time.time() - began) / 60


def records(arm, w, r):
    """The step records of one run's log.jsonl ([] if the run is missing)."""
    path = os.path.join(run_dir(arm, w, r), "log.jsonl")
    return eval_py.read_log(path)[1] if os.path.exists(path) else []


logs = {cell: records(*cell) for cell in cells}  # each log read once

# --------------------------------------------------------------------------------------------------
# 2) C3/C4: held-out accuracy per arm, paired with uniform by (warm start, RL seed)
# --------------------------------------------------------------------------------------------------

METRICS = {"greedy": "eval_accuracy", "avg@4": "eval_avg@4"}


def evals(recs, key):
    """[(step, value)] of one run's evaluations, the one before RL at step 0."""
    return [(r["step"] + 1, r[key]) for r in recs if key in r]


table = {}
for arm in args.arms:
    row = {}
    for name, key in METRICS.items():
        finals, areas, starts, diffs, area_diffs = [], [], [], [], []
        for w in args.warm_seeds:
            for r in args.rl_seeds:
                curve, base = evals(logs[arm, w, r], key), evals(logs["uniform", w, r], key)
                if not curve or curve[-1][0] != args.steps:
                    continue  # a run that did not finish
                finals.append(curve[-1][1])
                areas.append(statistics.mean(v for s, v in curve if s > 0))   # mean over the evaluations after RL began
                starts.append(curve[0][1])
                if base and base[-1][0] == curve[-1][0]:
                    diffs.append(curve[-1][1] - base[-1][1])
                    area_diffs.append(areas[-1] - statistics.mean(v for s, v in base if s > 0))
        row[name] = {"start": statistics.mean(starts) if starts else None, "final": finals, "area": areas,
                     "vs_uniform": diffs, "area_vs_uniform": area_diffs}
    lucky = [r["lucky"] for cell, recs in logs.items() if cell[0] == arm for r in recs if "lucky" in r]
    lucky_eval = [r["eval_lucky@4"] for cell, recs in logs.items() if cell[0] == arm for r in recs[1:]
                  if "eval_lucky@4" in r]
    clusters = [r["clusters"] for cell, recs in logs.items() if cell[0] == arm for r in recs if r.get("clusters")]
    row["lucky_train"] = statistics.mean(lucky) if lucky else None
    row["lucky_eval"] = statistics.mean(lucky_eval) if lucky_eval else None
    row["clusters"] = statistics.mean(clusters) if clusters else 0.0
    table[arm] = row
json.dump(table, open(os.path.join(args.out, "arms.json"), "w"), indent=1)

# --------------------------------------------------------------------------------------------------
# 3) C1, C2, Q1, Q2 on each warm start: teacher-forced reference responses of held-out questions
# --------------------------------------------------------------------------------------------------


def perception_mask(tokenizer, inputs, response_mask, P, rows):
    """(B, T) bool: the response tokens that write a value read off the image (report.perception_tokens)."""
    T = int(response_mask.sum(1).max())
    out = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, row in enumerate(rows):
        ids = inputs["input_ids"][b, P:][response_mask[b]].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        out[b, :len(ids)] = torch.tensor(report.perception_tokens(tokenizer, ids, text, row["perception"]))
    return out


def analyse(w):
    """Everything C1, C2, Q1 and Q2 need from warm start w (and its first uniform run), as plain numbers."""
    cpu = torch.device("cpu")
    model, tokenizer, image_processor = eval_py.load_model(warm_dir(w), cpu, "float32")
    rows = list(visualmath.make("visualmath", args.n_analysis, seed=10_000))  # the held-out split of RL seed 0
    inputs, full_mask, response_mask, P = report.report_batch(model, tokenizer, image_processor, rows, "reference", 0)
    truth = perception_mask(tokenizer, inputs, response_mask, P, rows)                   # (B, T)
    valid = response_mask[:, :truth.shape[1]].bool()                                     # (B, T)
    out = {"perception_token_share": float(truth.sum() / valid.sum()), "precision": {}}
    L = model.config.text_config.num_hidden_layers
    for query in ("predict", "self"):                                                    # Q1
        for band in ("early", "middle", "late", "all"):
            layers = list(connectivity.layer_band(band, L))
            patterns, rho = connectivity.image_attention(model, inputs, full_mask, layers=layers, query=query)
            anchors = atrl.select_anchors(rho, valid, 0.15)
            clusters = atrl.cluster_tokens(patterns.float(), valid)
            out["precision"][f"{query}/{band}"] = {
                "layers": layers, **report.anchor_precision_recall(anchors, truth & valid),
                "clusters_per_response": float((clusters.max(1).values + 1).float().mean())}
            if query == "predict" and band == "middle":  # train.py's defaults
                default_rho, default_anchors = rho[valid], anchors
    threshold, upper = report.otsu_split(default_rho)                                   # C1
    out["c1"] = {"otsu_threshold": threshold, "upper_mode_fraction": upper,
                 "bimodality_coefficient": report.bimodality_coefficient(default_rho),
                 "rho": default_rho.tolist(), "rho_perception": default_rho[truth[valid]].tolist()}
    # Q2: the peer selectors on the same tokens: entropy of the policy, VPPO's dependency on a blackened image
    batch = dict(inputs, keys=torch.arange(len(rows)))
    with torch.no_grad():
        logp, entropy = rollout.token_logprobs(model, batch, P)
        perturbed = rollout.token_logprobs(model, rollout.blacken_patches(batch, image_processor), P)[0]
    for name, signal, frac in (("entropy", entropy, 0.2), ("vppo", atrl.visual_dependency(logp, perturbed), 0.4)):
        kept = atrl.top_fraction(signal[:, :truth.shape[1]], valid, frac)
        out["precision"][name] = {"kept": frac, **report.anchor_precision_recall(kept, truth & valid)}
    # C2: where did plain RLVR move the policy? |delta log pi| on anchors vs elsewhere (first uniform run)
    trained = os.path.join(run_dir("uniform", w, args.rl_seeds[0]), f"checkpoint-{args.steps}")
    if os.path.isdir(trained):
        after = eval_py.load_model(trained, cpu, "float32")[0]
        with torch.no_grad():
            delta = (rollout.token_logprobs(after, inputs, P)[0] - logp).abs()[:, :truth.shape[1]] * valid
        out["c2"] = {"anchor_token_share": float(default_anchors.sum() / valid.sum()),
                     "anchor_update_share": float((delta * default_anchors).sum() / delta.sum()),
                     "perception_update_share": float((delta * truth).sum() / delta.sum())}
    return out


analysis_path = os.path.join(args.out, "analysis.json")
stored = json.load(open(analysis_path)) if os.path.exists(analysis_path) else {}
analysis = {}
for w in args.warm_seeds:
    if os.path.isdir(warm_dir(w)):
        analysis[str(w)] = analyse(w)
    elif str(w) in stored:  # --skip_training on a checkout without the (uncommitted) warm starts
        analysis[str(w)] = stored[str(w)]
json.dump(analysis, open(analysis_path, "w"))

# --------------------------------------------------------------------------------------------------
# 4) Plots and summary.md
# --------------------------------------------------------------------------------------------------

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

first = analysis.get(str(args.warm_seeds[0]))
if first:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(first["c1"]["rho"], bins=50, color="#4477aa", alpha=0.8, label="all response tokens")
    ax.hist(first["c1"]["rho_perception"], bins=50, color="#ee6677", alpha=0.7, label="perception tokens")
    ax.axvline(first["c1"]["otsu_threshold"], color="k", ls="--",
               label=f"Otsu split: {first['c1']['upper_mode_fraction']:.1%} above")
    ax.set_xlabel("rho = debiased attention mass on the image"); ax.set_ylabel("tokens"); ax.legend(fontsize=8)
    ax.set_title(f"C1: per-token connectivity (warm start {args.warm_seeds[0]}, predict row, middle third)", fontsize=9)
    fig.tight_layout(); fig.savefig(os.path.join(args.out, "density_hist.png"), dpi=120); plt.close(fig)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, (name, key) in zip(axes, METRICS.items()):
    for arm in args.arms:
        curves = [dict(evals(logs[arm, w, r], key)) for w in args.warm_seeds for r in args.rl_seeds]
        curves = [c for c in curves if c]
        xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if xs:
            ax.plot(xs, [statistics.mean(c[x] for c in curves) for x in xs], marker="o", ms=3, label=arm)
    ax.set_title(f"held-out {name} (mean over {len(args.warm_seeds) * len(args.rl_seeds)} runs)", fontsize=9)
    ax.set_xlabel("RL step")
axes[1].legend(fontsize=7, ncol=2)
fig.tight_layout(); fig.savefig(os.path.join(args.out, "curves.png"), dpi=120); plt.close(fig)


def mean_sd(values):
    return (f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1
            else f"{values[0]:.3f}" if values else "-")


def paired(diffs):
    if not diffs:
        return "- | -"
    mean, half = trials.interval(diffs)
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | {sum(d > 0 for d in diffs)}/{len(diffs)}"


n_pairs = len(args.warm_seeds) * len(args.rl_seeds)
lines = ["# Does AT-RL work? Measured on the tiny model and VisualMath v2", "",
         f"Command: `python experiments/v2.py {' '.join(sys.argv[1:])}`: {len(args.arms)} arms x warm starts "
         f"{args.warm_seeds} x RL seeds {args.rl_seeds}, {args.steps} steps per run, held-out evaluation every "
         f"{args.eval_every} steps (256 questions, greedy and avg@4 at temperature 1)"
         + (" -- tables rebuilt from the logs in runs/, training skipped." if args.skip_training
            else f"; wall time {train_minutes:.0f} min for the builds and runs."), "",
         "Paired: a warm start and an RL seed fix the starting model, the prompts, their order and the held-out",
         "questions, so each arm's difference to `uniform` on the same pair is the sharp comparison. Intervals are",
         f"95% Student-t over the {n_pairs} pairs; 'above' counts the pairs where the arm beat `uniform`.", ""]
for name in METRICS:
    lines += [f"## C3/C4: held-out {name} accuracy", "",
              "| arm | start | end (mean ± sd) | mean over the curve | end vs uniform [95% CI] | above | "
              "curve vs uniform [95% CI] | above |", "|---|---|---|---|---|---|---|---|"]
    for arm in args.arms:
        m = table[arm][name]
        if not m["final"]:
            continue
        same = arm == "uniform"
        lines.append(f"| {arm} | {m['start']:.3f} | {mean_sd(m['final'])} | {mean_sd(m['area'])} | "
                     f"{'- | -' if same else paired(m['vs_uniform'])} | {'- | -' if same else paired(m['area_vs_uniform'])} |")
    lines.append("")
lines += ["![curves](curves.png)", "", "## Q3: lucky guesses and clusters per arm", "",
          "Share of rewarded answers whose reading was wrong (visualmath.read_right), over the training rollouts and",
          "over the sampled held-out answers of the evaluations after step 0; mean Louvain clusters per response.", "",
          "| arm | lucky (training) | lucky (held-out avg@4 samples) | clusters per response |", "|---|---|---|---|"]
for arm in args.arms:
    row = table[arm]
    fmt = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
    lines.append(f"| {arm} | {fmt(row['lucky_train'])} | {fmt(row['lucky_eval'])} | {row['clusters']:.2f} |")
if analysis:
    seeds = sorted(analysis)

    def each(get, fmt):
        """One figure per warm start, comma-separated: fmt.format(get(analysis of that warm start))."""
        return ", ".join(fmt.format(get(analysis[s])) for s in seeds)

    lines += ["", f"## C1, Q1, Q2, C2 on the warm starts {', '.join(seeds)} ({args.n_analysis} reference responses each)",
              "", f"Perception tokens are {each(lambda a: a['perception_token_share'], '{:.1%}')} of response tokens "
              "(the precision of a random pick).", "",
              "**C1** Otsu split of rho (predict row, middle third): "
              f"{each(lambda a: a['c1']['upper_mode_fraction'], '{:.1%}')} of tokens in the upper mode (paper: ~15%); "
              f"bimodality coefficient {each(lambda a: a['c1']['bimodality_coefficient'], '{:.2f}')} "
              "(> 0.555 suggests two modes). ![density](density_hist.png)", "",
              "**Q1, Q2** precision / recall against the perception tokens, one figure per warm start:", "",
              "| selector | precision | recall | clusters per response |", "|---|---|---|---|"]
    for key, first_row in analysis[seeds[0]]["precision"].items():
        label = key if "/" in key else f"{key} (top {first_row['kept']:.0%})"
        clusters = each(lambda a: a["precision"][key]["clusters_per_response"], "{:.2f}") if "/" in key else "-"
        lines.append(f"| {label} | {each(lambda a: a['precision'][key]['precision'], '{:.3f}')} | "
                     f"{each(lambda a: a['precision'][key]['recall'], '{:.3f}')} | {clusters} |")
    if all("c2" in analysis[s] for s in seeds):
        lines += ["", f"**C2** after the first uniform run of each warm start, anchors "
                  f"({each(lambda a: a['c2']['anchor_token_share'], '{:.1%}')} of tokens) carry "
                  f"{each(lambda a: a['c2']['anchor_update_share'], '{:.1%}')} of the total per-token update "
                  f"sum |Δ log π|; perception tokens carry {each(lambda a: a['c2']['perception_update_share'], '{:.1%}')}."]
open(os.path.join(args.out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
