"""eval.py -- how well a checkpoint answers visual math questions: the one evaluator of train.py, models/tiny.py and this CLI.

Two modes, one script:

1. **Accuracy** (default). For N questions x_i with gold answers and a grader g (grading.compute_reward):

       greedy accuracy = 1/N  sum_i g(y_i),                 y_i  = greedy decoding of x_i
       avg@k           = 1/N  sum_i 1/k sum_j g(y_ij),       y_ij ~ pi(. | x_i) at --temperature, j = 1..k
       pass@k          = 1/N  sum_i max_j g(y_ij)

   per benchmark, split into multiple-choice and free-form questions (by the benchmark's own label), printed as a
   table with 95% intervals and saved as JSON with a few graded examples. Beside our grading, each benchmark's own
   scoring rule (tasks/scorers.py: MathVista's normalize_extracted_answer, MMMU-Pro's parser, ...) gives the
   `official` accuracy, plus the metrics it defines over groups (DynaMath worst case, We-Math's four dimensions).
   Benchmarks: the synthetic VisualMath held-out split, any file / folder / hub dataset tasks/benchmarks.py reads
   (on its evaluation split unless --split says otherwise), or `--suite paper`: the paper's nine, from the hub or
   from --data_root with one sub-folder per benchmark (docs/benchmarks.md).
2. **Training curves** (`--curves runs/X/log.jsonl[,runs/Y/log.jsonl]`): reward, accuracy, held-out accuracy
   and anchor statistics of train.py runs, overlaid, as curves.png.

Where we depart from the benchmarks' official protocols, or guess (each is visible below):
  1. Grading is our rule-based grading.compute_reward (last <answer>/\\boxed{}/"answer is", numbers by value,
     letters <-> option text); `official` applies each benchmark's scorer to the answer our extractor read, where
     MathVista, MathVerse, MMK12 and LogicVista extract with a GPT model: close to, not identical with, published
     numbers.
  2. The prompt is our think/answer format instruction (rollout.build_messages), not MathVista's `query`
     with its hints: the policy is evaluated in the format it was trained in.
  3. Sample j of question i draws its noise from key (seed * 1_000_003 + i) * k + j (rollout's counter-based
     Gumbel sampler), so a question's samples do not depend on which rank or batch slot it lands in.
     NOTE: the noise is keyed by the response position, not the padded width; but a question's logits can
     differ in their last bits with the batch it shares (a GEMM rounds by row count; left padding), so a
     near-tie can still flip when --batch_size or the world size changes.
  4. Intervals: 95% Wilson for greedy accuracy (a 0/1 per question), normal over the per-question means for
     avg@k; a "lucky" answer is right with a wrong reading (visualmath.read_right), counted on VisualMath only.

References: MathVista (Lu et al. 2024, arXiv 2310.02255, testmini), MathVerse (Zhang et al. 2024), Geometry3K
(Lu et al. 2021); pass@k as in Chen et al. 2021 (here with n = k samples); Wilson 1927 (score interval).

Run it:
    python eval.py --model runs/default/checkpoint-40 --benchmark visualmath --limit 500
    python eval.py --model runs/default/checkpoint-40 --benchmark visualmath --k 8 --temperature 1.0
    # MathVista testmini (1000 questions; hub download, bf16 on GPU; Qwen2.5-VL's usual 1280-token image cap:
    # 1003520 = 1280 x 28^2 px; for a Qwen3-VL checkpoint 1280 tokens are 1310720 = 1280 x 32^2, docs/families.md):
    torchrun --nproc_per_node 8 eval.py --model runs/default/checkpoint-40 --benchmark AI4Math/MathVista \
        --split testmini --max_new_tokens 2048 --max_pixels 1003520 --out runs/default/mathvista_testmini.json
    python eval.py --model Qwen/Qwen2.5-VL-3B-Instruct --benchmark /data/MathVista/testmini.json,/data/g3k/test.parquet
    python eval.py --model runs/default/checkpoint-40 --suite paper --data_root /data/bench   # the nine, offline
    python eval.py --curves runs/atrl/log.jsonl,runs/uniform/log.jsonl --out_dir runs/compare
Tests: OMP_NUM_THREADS=1 python -m pytest -q tests/test_eval.py
"""
import dataclasses
import json
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import rollout
from infra import cli, runs
from models import family
from tasks import benchmarks, grading, scorers, splits, suite, visualmath

# --------------------------------------------------------------------------------------------------
# Config: one flat dataclass; every field becomes a --flag (booleans are plain switches).
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    # What to evaluate
    model: str = ""                 # checkpoint dir or hub id; "" = the embedded tiny model (built by models/tiny.py)
    benchmark: str = "visualmath"   # comma-separated: visualmath | hub dataset | local .parquet/.json/.jsonl/folder (name@split too)
    suite: str = ""                 # paper = the paper's nine benchmarks (replaces --benchmark); "" = --benchmark
    data_root: str = ""             # --suite from local copies: DIR/<name> per benchmark (docs/benchmarks.md); "" = hub ids
    schema: str = ""                # one of tasks/suite.py's SCHEMAS; "" = detect from the columns
    split: str = ""                 # exact split name, for folders and hub ids alike; "" = the benchmark's evaluation split
    config: str = ""                # README config / hub subset (MMMU-Pro: vision); "" = the suite's or the only one
    show_choices: int = 0           # 1 = Geometry3K prompts list its 4 options; 0 = the problem alone (EasyR1/verl)
    limit: int = 0                  # first N questions per benchmark; 0 = all (VisualMath: 500 generated)
    visualmath_seed: int = 10_000   # seed of the VisualMath held-out split (train.py holds out seed + 10000)
    # Decoding
    greedy: int = 1                 # 1 = greedy accuracy
    k: int = 1                      # samples per question for avg@k / pass@k (needs --temperature > 0)
    temperature: float = 0.0        # sampling temperature of avg@k; 0 = no sampled metrics
    top_p: float = 1.0              # nucleus sampling for avg@k
    rollout: str = "engine"         # engine: engine.py's decode engine | hf: transformers' generate (the reference it equals)
    max_new_tokens: int = 1024      # response budget; a response without EOS is graded as written
    batch_size: int = 16            # questions per generate call (x k rollouts when sampling)
    min_pixels: int = 0             # image lower bound in pixels; 0 = the checkpoint's image processor's
    max_pixels: int = 0             # image upper bound in pixels; 0 = the checkpoint's image processor's
    dtype: str = "auto"             # auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float32
    seed: int = 0                   # sampling keys (see the docstring, guess 3)
    show: int = 3                   # graded examples per benchmark kept in the JSON
    out: str = "runs/eval/results.json"  # accuracy table as JSON
    # Training curves
    curves: str = ""                # comma-separated train.py log.jsonl files -> --out_dir/curves.png
    out_dir: str = "runs/eval"      # where curves.png goes


def parse_config(argv=None):
    """EvalConfig from the command line (cli.parse_config: --help lines are the comments above), every value
    checked up front; a bad one stops with one line naming it and what to do."""
    cfg = cli.parse_config(EvalConfig, __doc__.split("\n")[0], "eval.py", argv)
    runs.check_model("eval.py", "model", cfg.model)
    for name in cfg.benchmark.split(",") if not (cfg.curves or cfg.suite) else ():
        cli.check_data("eval.py", "benchmark", name, builtin=visualmath.TASKS)
    if cfg.data_root and not os.path.isdir(cfg.data_root):
        cli.config_error("eval.py", f"--data_root {cfg.data_root!r}: no such folder; it holds one sub-folder per "
                                    f"benchmark ({', '.join(suite.PAPER_SUITE)})")
    for path in cfg.curves.split(",") if cfg.curves else ():
        if not os.path.isfile(path):
            cli.config_error("eval.py", f"--curves {path!r}: no such file; pass train.py logs, e.g. runs/default/log.jsonl")
    cli.check("eval.py", cfg, [
        ("k", cfg.k >= 1, "must be >= 1"),
        ("temperature", cfg.temperature >= 0, "must be >= 0 (0 = no sampled metrics)"),
        ("temperature", cfg.k == 1 or cfg.temperature > 0,
         f"--k {cfg.k} at temperature 0 would repeat one greedy answer k times; pass --temperature > 0 (e.g. 1.0) for avg@k"),
        ("greedy", cfg.greedy in (0, 1), "use 0 or 1"),
        ("greedy", cfg.greedy or cfg.temperature > 0, "--greedy 0 and --temperature 0: nothing to measure"),
        ("schema", cfg.schema in ("", *suite.SCHEMAS), f"use {', '.join(suite.SCHEMAS)}, or leave it empty to detect it"),
        ("suite", cfg.suite in ("", "paper"), "use paper (the paper's nine benchmarks) or leave it empty"),
        ("show_choices", cfg.show_choices in (0, 1), "use 0 or 1"),
        ("top_p", 0 < cfg.top_p <= 1, "must be in (0, 1]"),
        *cli.one_of(cfg, rollout=("engine", "hf"), dtype=("auto", "bfloat16", "float32")),
        *[(n, getattr(cfg, n) >= 1, "must be >= 1") for n in ("max_new_tokens", "batch_size")],
        *[(n, getattr(cfg, n) >= 0, "must be >= 0") for n in ("limit", "visualmath_seed", "seed", "show")],
        # (>= one merged vision token of the checkpoint's family is checked once it is loaded: family.pixel_bounds)
        ("min_pixels", cfg.min_pixels >= 0, "use 0 (the checkpoint's) or >= one vision token (784 Qwen2.5-VL, 1024 Qwen3-VL)"),
        ("max_pixels", cfg.max_pixels == 0 or cfg.max_pixels >= cfg.min_pixels, "use 0 (the checkpoint's) or a value >= --min_pixels"),
    ])
    return cfg

# --------------------------------------------------------------------------------------------------
# Setup: model loading (torchrun's process group: runs.setup_distributed, shared with train.py).
# --------------------------------------------------------------------------------------------------


def load_model(path, device, dtype="auto", min_pixels=0, max_pixels=0):
    """(model in eval mode with sdpa attention -- the probe wraps it --, tokenizer, image_processor); a checkpoint
    of a family the project does not support, one whose weights do not all match, or pixel bounds below one of its
    vision tokens (models/family.pixel_bounds; 0 = the checkpoint's own) stop in one line."""
    if not path:  # the embedded default (built by models/tiny.py, which measures itself with this file: no import here)
        path = cli.TINY_MODEL_DIR
        if not os.path.exists(os.path.join(path, "sft_report.json")):
            cli.config_error("eval.py", f"--model '': the embedded tiny model is not built yet ({path}); run "
                                        "python models/tiny.py first (~3 min), or pass --model")
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    try:
        model = family.load_model(path, getattr(torch, dtype))
        tokenizer, image_processor = family.load_processor(path)
    except (OSError, ValueError) as err:
        cli.config_error("eval.py", f"--model {str(err).splitlines()[0][:400]}")
    family.pixel_bounds(image_processor, min_pixels, max_pixels, prog="eval.py")  # >= one of its vision tokens
    return model.to(device).eval(), tokenizer, image_processor

# --------------------------------------------------------------------------------------------------
# Accuracy: responses in, counts out. Grading is grading.compute_reward; generation is rollout.sample_groups.
# --------------------------------------------------------------------------------------------------

# Per-benchmark sums, all-reduced in this order. "choice" = multiple-choice questions only; sampled sums
# are per-question means over its k samples (so avg@k = sampled / n, and sampled_sq feeds its interval);
# "read"/"lucky" count only questions with ground-truth perception values (VisualMath): a lucky answer is
# right with a wrong reading (visualmath.read_right), and lucky shares are taken over the right answers.
COUNT_KEYS = ("n", "n_choice", "greedy", "greedy_format", "greedy_choice", "greedy_official",
              "sampled", "sampled_sq", "sampled_format", "sampled_choice", "sampled_pass", "sampled_official",
              "n_perception", "greedy_read", "greedy_right_p", "greedy_lucky",
              "sampled_read", "sampled_right_p", "sampled_lucky")


def model_responder(model, tokenizer, image_processor, max_new_tokens, top_p=1.0, min_pixels=None,
                    max_pixels=None, synced=False, engine=None):
    """respond(rows, keys, k, temperature) -> k response texts per row, from the model.

    Temperature 0 decodes greedily (k must be 1); otherwise sample j of row r uses key keys[r] * k + j.
    synced=True keeps every rank generating until all are done (FSDP: each forward is a collective).
    engine: an engine.DecodeEngine decodes; None = transformers' generate (the same texts, slower).
    """
    def respond(rows, keys, k, temperature):
        batch = rollout.sample_groups(model, tokenizer, image_processor, rows, k, keys, max_new_tokens,
                                      temperature, top_p, min_pixels or None, max_pixels or None, synced, engine)
        return [batch["texts"][r * k:(r + 1) * k] for r in range(len(rows))]
    return respond


def grade(row, text):
    """(correct, formatted, read, official) of one response to one unified-schema row: 0.0/1.0, read right as
    True/False when the row has perception values (VisualMath) else None, and the benchmark's own rule's verdict
    (tasks/scorers.py) on the same extracted answer."""
    parts = grading.compute_reward(text, row["answer"], row.get("choices"), precision=row.get("precision"))
    read = visualmath.read_right(text, row["perception"]) if row.get("perception") else None
    official = float(scorers.score(row, grading.extract_answer(text)))
    return parts["accuracy"], parts["format"], read, official


def graded(row, text):
    """One response for inspection: its verdicts, the answer the grader extracted, and the text itself."""
    correct, formatted, read, official = grade(row, text)
    return {"correct": correct, "official": official, "format": formatted, "read_right": read,
            "extracted": grading.extract_answer(text), "response": text}


def tally(rows, greedy_texts=None, sampled_texts=None):
    """Counts (COUNT_KEYS) for rows and their responses: one greedy text per row, and/or k sampled texts.

    >>> rows = [{"answer": "7", "choices": []}, {"answer": "big", "choices": ["small", "big"]}]
    >>> greedy = ["<answer>7</answer>", "<answer>A</answer>"]                   # right, wrong
    >>> sampled = [["7", "8"], ["<answer>B</answer>", "<answer>big</answer>"]]  # 1/2 right, 2/2 right
    >>> c = tally(rows, greedy, sampled)
    >>> c["n"], c["n_choice"], c["greedy"], c["greedy_choice"], c["sampled"], c["sampled_sq"], c["sampled_pass"]
    (2.0, 1.0, 1.0, 0.0, 1.5, 1.25, 2.0)
    >>> row = {"answer": "10", "perception": ["3", "5", "2"]}      # a right sum from a wrong reading: lucky
    >>> c = tally([row], ["<think>3+5=8, 8+2=10</think><answer>10</answer>"], [["<think>4+4=8, 8+2=10</think><answer>10</answer>"]])
    >>> c["greedy_read"], c["greedy_lucky"], c["sampled_read"], c["sampled_lucky"], c["sampled_right_p"]
    (1.0, 0.0, 0.0, 1.0, 1.0)
    """
    counts = dict.fromkeys(COUNT_KEYS, 0.0)
    for r, row in enumerate(rows):
        # the benchmark's own label (MathVerse Vision Only is multiple choice without options to show)
        is_choice = float(row.get("question_type") == "multi_choice" if row.get("question_type") else bool(row.get("choices")))
        has_perception = float(bool(row.get("perception")))
        counts["n"] += 1
        counts["n_choice"] += is_choice
        counts["n_perception"] += has_perception
        if greedy_texts is not None:
            correct, formatted, read, official = grade(row, greedy_texts[r])
            counts["greedy"] += correct
            counts["greedy_official"] += official
            counts["greedy_format"] += formatted
            counts["greedy_choice"] += correct * is_choice
            counts["greedy_read"] += float(bool(read))
            counts["greedy_right_p"] += correct * has_perception
            counts["greedy_lucky"] += correct * float(read is False)
        if sampled_texts is not None:
            verdicts = [grade(row, t) for t in sampled_texts[r]]
            k = len(verdicts)
            mean_correct = sum(v[0] for v in verdicts) / k
            counts["sampled"] += mean_correct
            counts["sampled_sq"] += mean_correct ** 2
            counts["sampled_format"] += sum(v[1] for v in verdicts) / k
            counts["sampled_choice"] += mean_correct * is_choice
            counts["sampled_pass"] += float(mean_correct > 0)
            counts["sampled_official"] += sum(v[3] for v in verdicts) / k
            counts["sampled_read"] += sum(float(bool(v[2])) for v in verdicts) / k
            counts["sampled_right_p"] += sum(v[0] for v in verdicts) * has_perception  # right samples (a count)
            counts["sampled_lucky"] += sum(v[0] * float(v[2] is False) for v in verdicts)
    return counts


def wilson_interval(successes, n, z=1.96):
    """95% Wilson score interval of a binomial proportion (stays inside [0, 1], sane at 0 and n).

    >>> wilson_interval(8, 10)
    [0.4902, 0.9433]
    """
    if n == 0:
        return None
    p, z2 = successes / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * ((p * (1 - p) + z2 / (4 * n)) / n) ** 0.5 / (1 + z2 / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def mean_interval(total, total_sq, n, z=1.96):
    """95% normal interval of a mean of n values in [0, 1] from their sum and sum of squares (clipped to [0, 1]).

    >>> mean_interval(1.5, 1.25, 2)    # values 0.5 and 1.0
    [0.26, 1.0]
    """
    if n < 2:
        return None
    mean = total / n
    sd = max(0.0, (total_sq - n * mean * mean) / (n - 1)) ** 0.5
    return [round(max(0.0, mean - z * sd / n ** 0.5), 4), round(min(1.0, mean + z * sd / n ** 0.5), 4)]


def summarize(counts, greedy=True, k=0):
    """Metrics of one benchmark from its (all-reduced) counts; k = 0 means no sampled metrics.

    Intervals: Wilson for greedy accuracy (one 0/1 per question), normal over the per-question means for
    avg@k. Read and lucky figures appear only when some questions have perception values.
    >>> m = summarize({"n": 4, "n_choice": 1, "greedy": 3, "greedy_format": 4, "greedy_choice": 1}, k=0)
    >>> m["n_free_form"], m["accuracy"], m["accuracy_multi_choice"], round(m["accuracy_free_form"], 4), m["accuracy_ci"]
    (3, 0.75, 1.0, 0.6667, [0.3006, 0.9544])
    """
    counts = dict(dict.fromkeys(COUNT_KEYS, 0.0), **counts)
    n, n_choice, n_p = counts["n"], counts["n_choice"], counts["n_perception"]
    n_free = n - n_choice
    out = {"n": int(n), "n_multi_choice": int(n_choice), "n_free_form": int(n_free)}

    def ratio(a, b):
        return a / b if b else None  # None: no question of that kind (printed as "-")
    if greedy:
        out.update({"accuracy": ratio(counts["greedy"], n), "accuracy_ci": wilson_interval(counts["greedy"], n),
                    "official": ratio(counts["greedy_official"], n),
                    "official_ci": wilson_interval(counts["greedy_official"], n),
                    "format": ratio(counts["greedy_format"], n),
                    "accuracy_multi_choice": ratio(counts["greedy_choice"], n_choice),
                    "accuracy_free_form": ratio(counts["greedy"] - counts["greedy_choice"], n_free)})
        if n_p:
            out.update({"read": ratio(counts["greedy_read"], n_p),
                        "lucky": ratio(counts["greedy_lucky"], counts["greedy_right_p"]) or 0.0})
    if k:
        out.update({f"avg@{k}": ratio(counts["sampled"], n), f"avg@{k}_ci": mean_interval(counts["sampled"], counts["sampled_sq"], n),
                    f"pass@{k}": ratio(counts["sampled_pass"], n), f"format@{k}": ratio(counts["sampled_format"], n),
                    f"official@{k}": ratio(counts["sampled_official"], n),
                    f"avg@{k}_multi_choice": ratio(counts["sampled_choice"], n_choice),
                    f"avg@{k}_free_form": ratio(counts["sampled"] - counts["sampled_choice"], n_free)})
        if n_p:
            out.update({f"read@{k}": ratio(counts["sampled_read"], n_p),
                        f"lucky@{k}": ratio(counts["sampled_lucky"], counts["sampled_right_p"]) or 0.0})
    return out


def evaluate_rows(dataset, index, respond, greedy=True, k=0, temperature=0.0, batch_size=16, seed=0, show=3,
                  desc="eval", progress=True, verdicts=None):
    """Counts and graded examples for dataset[i], i in `index` (this rank's share), in batches.

    respond(rows, keys, k, temperature) -> k texts per row (model_responder, or canned texts in tests).
    Keys depend on the global question index only, never on the rank or the position in a batch.
    The first `show` rows come back graded (response, extracted answer, verdict) for inspection.
    verdicts: a dict that receives {question index: the official greedy verdict} (for group metrics).
    """
    counts, examples = dict.fromkeys(COUNT_KEYS, 0.0), []
    for start in tqdm(range(0, len(index), batch_size), desc=desc, disable=not progress):
        ids = index[start:start + batch_size]
        rows = [dataset[i] for i in ids]
        keys = [seed * 1_000_003 + i for i in ids]
        greedy_texts = [t[0] for t in respond(rows, keys, 1, 0.0)] if greedy else None
        sampled_texts = respond(rows, keys, k, temperature) if k else None
        for key, value in tally(rows, greedy_texts, sampled_texts).items():
            counts[key] += value
        if verdicts is not None and greedy_texts is not None:
            verdicts.update({i: grade(row, text)[3] for i, row, text in zip(ids, rows, greedy_texts)})
        for r, row in enumerate(rows[:max(0, show - len(examples))]):
            ex = {"id": row["id"], "question": benchmarks.format_question(row), "answer": row["answer"],
                  "precision": row.get("precision"), "unit": row.get("unit")}
            if greedy_texts is not None:
                ex["greedy"] = graded(row, greedy_texts[r])
            if sampled_texts is not None:
                ex["samples"] = [graded(row, t) for t in sampled_texts[r]]
            examples.append(ex)
    return counts, examples


def evaluate(dataset, respond, rank=0, world=1, greedy=True, k=4, temperature=1.0, batch_size=64, seed=0, show=0,
             reduce=None, desc="eval", progress=False):
    """The one evaluator of train.py, models/tiny.py and eval.py: greedy accuracy and avg@k (k = 0: none) of `dataset`.

    Each rank scores questions rank, rank + world, ...; `reduce` sums a float64 tensor over ranks (None on
    one process). Returns summarize()'s metrics plus the graded examples of this rank under "examples".
    Keys depend only on the question's index, so successive evaluations of a changing policy share their
    sampling noise (common random numbers: the change in avg@k is the policy's, not the dice's).
    """
    index, verdicts = list(range(rank, len(dataset), world)), {}
    counts, examples = evaluate_rows(dataset, index, respond, greedy, k, temperature, batch_size, seed, show,
                                     desc=desc, progress=progress, verdicts=verdicts)
    # NOTE: sums, not per-rank means: ranks hold different numbers of questions when world does not divide N
    summed = torch.tensor([counts[c] for c in COUNT_KEYS], dtype=torch.float64)
    if reduce is not None:
        summed = reduce(summed)
    metrics = summarize(dict(zip(COUNT_KEYS, summed.tolist())), greedy, k)
    if greedy and "meta" in getattr(dataset, "column_names", ()):  # a benchmark's metrics over groups of rows
        per_row = torch.zeros(len(dataset), dtype=torch.float64)   # each rank fills its rows; the sum is all of them
        per_row[list(verdicts)] = torch.tensor(list(verdicts.values()), dtype=torch.float64)
        per_row = reduce(per_row) if reduce is not None else per_row
        metas = [json.loads(m) if m else {} for m in dataset["meta"]]
        metrics["groups"] = scorers.group_metrics(dataset[0]["source"], metas, per_row.tolist())
    return {**metrics, "examples": examples}


def describe(metrics, k=4, prefix=""):
    """One line of evaluate()'s figures, e.g. 'greedy 0.242 [0.19, 0.30] avg@4 0.338 [0.30, 0.38] read 0.24
    (sampled 0.35) lucky 0% (sampled 1%) (n=256)'; the parts a benchmark lacks are left out. prefix: the
    figures are the keys that start with it (train.py logs them as eval_<name>)."""
    metrics = {key[len(prefix):]: v for key, v in metrics.items() if key.startswith(prefix)}
    ci = lambda v: f" [{v[0]:.2f}, {v[1]:.2f}]" if v else ""  # noqa: E731
    line = f"greedy {metrics['accuracy']:.3f}{ci(metrics.get('accuracy_ci'))}"
    if f"avg@{k}" in metrics:
        line += f" avg@{k} {metrics[f'avg@{k}']:.3f}{ci(metrics.get(f'avg@{k}_ci'))}"
    if "read" in metrics:
        sampled = lambda key, fmt: f" (sampled {metrics[key]:{fmt}})" if key in metrics else ""  # noqa: E731
        line += (f" read {metrics['read']:.2f}{sampled(f'read@{k}', '.2f')} lucky {metrics['lucky']:.0%}"
                 f"{sampled(f'lucky@{k}', '.0%')}")
    return line + f" (n={metrics['n']})"


def load_rows(name, cfg, split="", config=""):
    """(rows, data line) of one benchmark: a VisualMath held-out split or tasks/benchmarks.py on its evaluation split."""
    return splits.evaluation_data(name, split or cfg.split, cfg.limit, cfg.visualmath_seed, config or cfg.config,
                                  bool(cfg.show_choices), cfg.schema)


def benchmark_list(cfg):
    """[(table name, source, split, config)] to evaluate: --benchmark's, or the paper's suite (hub ids or --data_root)."""
    if not cfg.suite:
        return [(name, name, "", "") for name in cfg.benchmark.split(",") if name]
    listed = []
    for b in (suite.benchmark(name) for name in suite.PAPER_SUITE):
        source = os.path.join(cfg.data_root, b.name) if cfg.data_root else b.hub_id
        if cfg.data_root and not os.path.isdir(source):
            cli.config_error("eval.py", f"--data_root {cfg.data_root!r} has no folder {b.name}/ for {b.title}; it needs "
                                        f"one per benchmark: {', '.join(suite.PAPER_SUITE)} (docs/benchmarks.md)")
        listed.append((b.title, source, cfg.split or b.eval_split, b.config))
    return listed


def format_table(results, k=0):
    """Fixed-width table, one row per benchmark, accuracies with their 95% intervals; '-' where a metric does not
    apply; a last row averages the benchmarks (unweighted, as papers do) when there are several."""
    def cell(res, key):
        value, ci = res.get(key), res.get(f"{key}_ci")
        if value is None:
            return "-"
        return f"{value:.4f}" + (f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else "") if isinstance(value, float) else str(value)
    columns = [("n", 6), ("accuracy", 20), ("official", 20), ("accuracy_multi_choice", 13), ("accuracy_free_form", 13),
               ("format", 8), ("read", 7), ("lucky", 7)] + ([(f"avg@{k}", 20), (f"pass@{k}", 8)] if k else [])
    header = ["n", "greedy [95% CI]", "official [95% CI]", "multi-choice", "free-form", "format", "read", "lucky"]
    header += [f"avg@{k} [95% CI]", f"pass@{k}"] if k else []
    lines = [f"{'benchmark':<28}" + "".join(f"{h:>{w}}" for h, (_, w) in zip(header, columns)) + "  groups"]
    rows = dict(results)
    if len(results) > 1:  # the suite's mean, like the papers' "Avg." column
        rows["mean"] = {key: sum(r[key] for r in results.values()) / len(results) for key, _ in columns[1:3]
                        if all(isinstance(r.get(key), float) for r in results.values())}
    for name, res in rows.items():
        groups = ", ".join(f"{g} {v:.3f}" if isinstance(v, float) else f"{g} {v}"
                           for g, v in list((res.get("groups") or {}).items())[:5])  # the headline ones come first
        lines.append(f"{name[-28:]:<28}" + "".join(f"{cell(res, key):>{w}}" for key, w in columns) + f"  {groups}")
    return "\n".join(lines)


def run_accuracy(cfg):
    """The accuracy table: every benchmark in --benchmark, this rank's share of it, counts summed over ranks."""
    loaded, lines = {}, []
    try:  # every benchmark loads before the model and before any result: a bad one stops in one line, losing nothing
        for label, source, split, config in benchmark_list(cfg):
            loaded[label], line = load_rows(source, cfg, split, config)
            lines.append(line)
    except ValueError as err:  # tasks/benchmarks.py's errors name the file, row and field
        cli.config_error("eval.py", f"--{'suite' if cfg.suite else 'benchmark'}: {err}")
    rank, world, _, device = runs.setup_distributed()
    if rank == 0:
        print("\n".join(lines), flush=True)  # "data: <source> split=<name> rows=<n>", one per benchmark
    model, tokenizer, image_processor = load_model(cfg.model, device, cfg.dtype, cfg.min_pixels, cfg.max_pixels)
    decoder = None
    if cfg.rollout == "engine":
        import engine  # engine.py: prefill once, static KV cache, CUDA graphs
        decoder = engine.DecodeEngine(model)
    respond = model_responder(model, tokenizer, image_processor, cfg.max_new_tokens, cfg.top_p,
                              cfg.min_pixels, cfg.max_pixels, engine=decoder)
    k = cfg.k if cfg.temperature > 0 else 0  # 0 = no sampled metrics (greedy only)
    results = {}
    for name, rows in loaded.items():
        results[name] = evaluate(rows, respond, rank, world, bool(cfg.greedy), k, cfg.temperature,
                                 cfg.batch_size, cfg.seed, cfg.show, lambda t: runs.all_reduce(t.to(device)).cpu(),
                                 desc=name[-30:], progress=rank == 0)
    if rank == 0:
        table = format_table(results, k)
        print(table)
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "world": world, "data": lines, "table": table,
                       "results": results}, f, indent=1)
        print(f"saved {cfg.out}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return results

# --------------------------------------------------------------------------------------------------
# Training curves from train.py's log.jsonl (first line {"config": ...}, then one record per step).
# --------------------------------------------------------------------------------------------------

CURVE_PANELS = (("reward", "train reward"), ("accuracy", "train accuracy"), ("eval_accuracy", "held-out accuracy"),
                ("anchor_frac", "anchor fraction"), ("clusters", "clusters per response"),
                ("w_anchor_mean", "mean W on anchors"))


def read_log(path):
    """(config dict, step records) of a train.py log.jsonl (a last line torn by a kill is dropped)."""
    lines = runs.read_log(path)
    if not lines or "config" not in lines[0]:
        raise SystemExit(f"{path}: not a train.py log (its first line should be {{\"config\": ...}})")
    return lines[0]["config"], [r for r in lines[1:] if "step" in r]


def plot_curves(paths, out_path):
    """One panel per logged key in CURVE_PANELS, one line per run (labelled by its weighting arm and folder)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for path in paths:
        config, records = read_log(path)
        run, arm = os.path.basename(os.path.dirname(os.path.abspath(path))), config.get("weighting", "?")
        label = arm if run == arm else f"{arm} ({run})"
        for ax, (key, title) in zip(axes.flat, CURVE_PANELS):
            # x = updates the measured policy had seen: step s rolls out with the policy after s updates, while
            # its eval_accuracy is measured after step s's update (and step -1 holds the eval before RL)
            shift = 1 if key == "eval_accuracy" else 0
            points = [(r["step"] + shift, r[key]) for r in records if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3, label=label)
            ax.set(title=title, xlabel="optimizer steps done")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path

# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main(argv=None):
    if "--report" in (sys.argv[1:] if argv is None else argv):  # the report has its own command now
        cli.config_error("eval.py", "--report moved: python experiments/report.py --model ... --out_dir ... "
                                    "(the same flags)")
    cfg = parse_config(argv)
    if cfg.curves:
        print(f"wrote {plot_curves(cfg.curves.split(','), os.path.join(cfg.out_dir, 'curves.png'))}")
    else:
        run_accuracy(cfg)


if __name__ == "__main__":
    main()
