"""eval.py -- how well a checkpoint answers visual math questions, and which of its tokens look at the image.

Three modes, one script:

1. **Accuracy** (default). For N questions x_i with gold answers and a grader g (grading.compute_reward):

       greedy accuracy = 1/N  sum_i g(y_i),                 y_i  = greedy decoding of x_i
       avg@k           = 1/N  sum_i 1/k sum_j g(y_ij),       y_ij ~ pi(. | x_i) at --temperature, j = 1..k
       pass@k          = 1/N  sum_i max_j g(y_ij)

   per benchmark, split into multiple-choice and free-form questions, printed as a table and saved as JSON
   with a few graded examples. Benchmarks: the synthetic VisualMath held-out split, or any file / hub
   dataset data.load_benchmark reads (MathVista testmini with `precision` and `unit`, MathVerse, Geometry3K).
2. **Connectivity report** (`--report`). On VisualMath responses, per --anchor_query (predict / self):
   each token coloured by its image-attention density rho (connectivity.image_attention), anchors
   (atrl.select_anchors) and Louvain clusters (atrl.cluster_tokens) marked; the image with the strongest
   anchor's attention over its merged patches; the histogram of rho with its two modes split; and anchor
   precision / recall against the tokens that write the ground-truth perception values:

       precision = |anchors & perception tokens| / |anchors|
       recall    = |anchors & perception tokens| / |perception tokens|
       chance    = |perception tokens| / |tokens|                    (the precision of random anchors)

   written as one offline page, report.html, with PNGs next to it.
3. **Training curves** (`--curves runs/X/log.jsonl[,runs/Y/log.jsonl]`): reward, accuracy, held-out accuracy
   and anchor statistics of train.py runs, overlaid, as curves.png.

Where we depart from the benchmarks' official protocols, or guess (each is visible below):
  1. Grading is our rule-based grading.compute_reward (last <answer>/\\boxed{}/"answer is", numbers by value,
     letters <-> option text), not MathVista's GPT-4 answer extraction; scores are comparable between our
     checkpoints, close to but not identical with published numbers.
  2. The prompt is our think/answer format instruction (rollout.build_messages), not MathVista's `query`
     with its hints: the policy is evaluated in the format it was trained in.
  3. Sample j of question i draws its noise from key (seed * 1_000_003 + i) * k + j (rollout's counter-based
     Gumbel sampler), so a question's samples do not depend on which rank or batch slot it lands in.
     NOTE: the sampler also mixes the padded prompt width into the noise, so with prompts of different lengths
     (real benchmarks) samples still move with --batch_size / world size; VisualMath prompts share one length.
  4. Bimodality of rho is judged by Otsu's split (the cut that maximises the between-mode variance) and the
     population bimodality coefficient (skew^2 + 1) / kurtosis (1 for two spikes, 5/9 for a uniform, 1/3 for
     a Gaussian; > 5/9 hints at two modes). Neither is from the paper, which only reports "bimodal".
  5. Precision/recall count only responses that wrote at least one perception value (visualmath.locate_perception);
     token <-> character alignment is by incremental decoding.

References: MathVista (Lu et al. 2024, arXiv 2310.02255, testmini), MathVerse (Zhang et al. 2024), Geometry3K
(Lu et al. 2021); pass@k as in Chen et al. 2021 (here with n = k samples); Otsu 1979; SAS/Sarle's bimodality
coefficient. Dimension letters: B responses, T response tokens, V image tokens (merged patches).

Run it:
    python eval.py --model runs/default/checkpoint-40 --benchmark visualmath --limit 500
    python eval.py --model runs/default/checkpoint-40 --benchmark visualmath --k 8 --temperature 1.0
    # MathVista testmini (1000 questions; hub download, bf16 on GPU; Qwen's usual 1280-token image cap):
    torchrun --nproc_per_node 8 eval.py --model runs/default/checkpoint-40 --benchmark AI4Math/MathVista \
        --split testmini --max_new_tokens 2048 --max_pixels 1003520 --out runs/default/mathvista_testmini.json
    python eval.py --model Qwen/Qwen2.5-VL-3B-Instruct --benchmark /data/MathVista/testmini.json,/data/g3k/test.parquet
    python eval.py --report --model runs/default/checkpoint-40 --out_dir runs/default/report
    python eval.py --curves runs/atrl/log.jsonl,runs/uniform/log.jsonl --out_dir runs/compare
Tests: OMP_NUM_THREADS=1 python -m pytest -q tests/test_eval.py
"""
import dataclasses
import html
import json
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import atrl
import connectivity
import data
import grading
import rollout
import runs
import visualmath

# --------------------------------------------------------------------------------------------------
# Config: one flat dataclass; every field becomes a --flag (booleans are plain switches).
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    # What to evaluate
    model: str = ""                 # checkpoint dir or hub id; "" = the embedded tiny model (tiny.DEFAULT_DIR)
    benchmark: str = "visualmath"   # comma-separated: visualmath | hub dataset | local .parquet/.json/.jsonl/folder
    schema: str = ""                # geometry3k | mathvista | mathverse | virl39k; "" = detect from the columns
    split: str = ""                 # hub split (or file-name filter in a folder); "" = the benchmark's default
    limit: int = 0                  # first N questions per benchmark; 0 = all (VisualMath: 500 generated)
    visualmath_seed: int = 10_000   # seed of the VisualMath held-out split (train.py holds out seed + 10000)
    # Decoding
    greedy: int = 1                 # 1 = greedy accuracy
    k: int = 1                      # samples per question for avg@k / pass@k (needs --temperature > 0)
    temperature: float = 0.0        # sampling temperature of avg@k; 0 = no sampled metrics
    top_p: float = 1.0              # nucleus sampling for avg@k
    max_new_tokens: int = 1024      # response budget; a response without EOS is graded as written
    batch_size: int = 16            # questions per generate call (x k rollouts when sampling)
    min_pixels: int = 0             # image lower bound in pixels; 0 = the checkpoint's image processor's
    max_pixels: int = 0             # image upper bound in pixels; 0 = the checkpoint's image processor's
    dtype: str = "auto"             # auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float32
    seed: int = 0                   # sampling keys (see the docstring, guess 3)
    show: int = 3                   # graded examples per benchmark kept in the JSON
    out: str = "runs/eval/results.json"  # accuracy table as JSON
    # Connectivity report and curves
    report: bool = False            # write the connectivity report to --out_dir instead of accuracy
    curves: str = ""                # comma-separated train.py log.jsonl files -> --out_dir/curves.png
    out_dir: str = "runs/eval/report"  # where report.html / curves.png and their PNGs go
    task: str = "visualmath"        # the VisualMath task the report draws its questions from (visualmath | visualmath-v1)
    responses: str = "generated"    # report on greedy "generated" responses or teacher-forced "reference" ones
    n_show: int = 4                 # responses drawn token by token in the report
    n_stats: int = 64               # responses behind the histogram and precision/recall
    anchor_query: str = "predict,self"  # attention row(s) of token t: predict (query t-1), self (query t)
    anchor_frac: float = 0.15       # anchors = top fraction of each response's tokens by rho (train.py's default)
    probe_layers: str = "middle"    # early|middle|late third, all, or "4,5,6" (as train.py)
    sink_debias: int = 1            # 1 = drop the first-token sink and outlier image keys, renormalise
    sink_outlier_k: float = 5.0     # an image key is a sink if its mean attention > k x the median key's
    knn: int = 0                    # k of the kNN token graph that is clustered; 0 = round(sqrt(n)) in [2, 10] (as train.py)
    resolution: float = 1.0         # Louvain resolution


def parse_config(argv=None):
    """EvalConfig from the command line (runs.parse_config: --help lines are the comments above), every value
    checked up front; a bad one stops with one line naming it and what to do."""
    cfg = runs.parse_config(EvalConfig, __doc__.split("\n")[0], "eval.py", argv)
    runs.check_model("eval.py", "model", cfg.model)
    for name in cfg.benchmark.split(",") if not (cfg.report or cfg.curves) else ():
        runs.check_data("eval.py", "benchmark", name, builtin=visualmath.TASKS)
    for path in cfg.curves.split(",") if cfg.curves else ():
        if not os.path.isfile(path):
            runs.config_error("eval.py", f"--curves {path!r}: no such file; pass train.py logs, e.g. runs/default/log.jsonl")
    runs.check("eval.py", cfg, [
        ("k", cfg.k >= 1, "must be >= 1"),
        ("temperature", cfg.temperature >= 0, "must be >= 0 (0 = no sampled metrics)"),
        ("temperature", cfg.k == 1 or cfg.temperature > 0,
         f"--k {cfg.k} at temperature 0 would repeat one greedy answer k times; pass --temperature > 0 (e.g. 1.0) for avg@k"),
        ("greedy", cfg.greedy in (0, 1), "use 0 or 1"),
        ("greedy", cfg.greedy or cfg.temperature > 0, "--greedy 0 and --temperature 0: nothing to measure"),
        ("schema", cfg.schema in ("", *data._DEFAULT_SPLIT),  # the schemas data.load_benchmark knows
         f"use {', '.join(data._DEFAULT_SPLIT)}, or leave it empty to detect it from the columns"),
        ("dtype", cfg.dtype in ("auto", "bfloat16", "float32"), "use auto, bfloat16 or float32"),
        ("top_p", 0 < cfg.top_p <= 1, "must be in (0, 1]"),
        *[(n, getattr(cfg, n) >= 1, "must be >= 1") for n in ("max_new_tokens", "batch_size", "n_stats")],
        ("knn", cfg.knn >= 0, "must be >= 0 (0 = round(sqrt(n)) per response, in [2, 10])"),
        ("task", cfg.task in visualmath.TASKS, f"use one of {', '.join(visualmath.TASKS)}"),
        *[(n, getattr(cfg, n) >= 0, "must be >= 0") for n in ("limit", "visualmath_seed", "seed", "show", "n_show")],
        ("min_pixels", cfg.min_pixels == 0 or cfg.min_pixels >= 28 * 28, "use 0 (the checkpoint's) or >= 784 (28 x 28)"),
        ("max_pixels", cfg.max_pixels == 0 or cfg.max_pixels >= max(cfg.min_pixels, 28 * 28),
         "use 0 (the checkpoint's) or a value >= --min_pixels and 784"),
        ("responses", cfg.responses in ("generated", "reference"), "use 'generated' or 'reference'"),
        ("anchor_query", set(cfg.anchor_query.split(",")) <= {"predict", "self"}, "a comma-separated subset of predict,self"),
        ("anchor_frac", 0 < cfg.anchor_frac <= 1, "must be in (0, 1]"),
        ("probe_layers", cfg.probe_layers in ("early", "middle", "late", "all") or re.fullmatch(r"\d+(,\d+)*", cfg.probe_layers),
         "use early, middle, late, all or a comma list of layer indices like 4,5,6"),
        ("sink_debias", cfg.sink_debias in (0, 1), "use 0 or 1"),
        ("sink_outlier_k", cfg.sink_outlier_k > 0, "must be > 0 (default 5)"),
        ("resolution", cfg.resolution > 0, "must be > 0 (1.0 = standard modularity)"),
    ])
    return cfg

# --------------------------------------------------------------------------------------------------
# Setup: torchrun from environment variables (as train.py), model loading.
# --------------------------------------------------------------------------------------------------


def setup_distributed():
    """(rank, world, device); initialises the process group when started by torchrun."""
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def all_reduce(t):
    """Sum over ranks (in place); a no-op on one process."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def load_model(path, device, dtype="auto"):
    """(model in eval mode with sdpa attention -- the probe wraps it --, tokenizer, image_processor)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if not path:
        import tiny
        path = tiny.ensure_tiny_model()
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype),
                                                               attn_implementation="sdpa")
    tokenizer, image_processor = rollout.load_processor(path)
    return model.to(device).eval(), tokenizer, image_processor

# --------------------------------------------------------------------------------------------------
# Accuracy: responses in, counts out. Grading is grading.compute_reward; generation is rollout.sample_groups.
# --------------------------------------------------------------------------------------------------

# Per-benchmark sums, all-reduced in this order. "choice" = multiple-choice questions only; sampled sums
# are per-question means over its k samples (so avg@k = sampled / n, and sampled_sq feeds its interval);
# "read"/"lucky" count only questions with ground-truth perception values (VisualMath): a lucky answer is
# right with a wrong reading (visualmath.read_right), and lucky shares are taken over the right answers.
COUNT_KEYS = ("n", "n_choice", "greedy", "greedy_format", "greedy_choice",
              "sampled", "sampled_sq", "sampled_format", "sampled_choice", "sampled_pass",
              "n_perception", "greedy_read", "greedy_right_p", "greedy_lucky",
              "sampled_read", "sampled_right_p", "sampled_lucky")


def model_responder(model, tokenizer, image_processor, max_new_tokens, top_p=1.0, min_pixels=None,
                    max_pixels=None, synced=False):
    """respond(rows, keys, k, temperature) -> k response texts per row, from the model.

    Temperature 0 decodes greedily (k must be 1); otherwise sample j of row r uses key keys[r] * k + j.
    synced=True keeps every rank generating until all are done (FSDP: each forward is a collective).
    """
    def respond(rows, keys, k, temperature):
        batch = rollout.sample_groups(model, tokenizer, image_processor, rows, k, keys, max_new_tokens,
                                      temperature, top_p, min_pixels or None, max_pixels or None, synced)
        return [batch["texts"][r * k:(r + 1) * k] for r in range(len(rows))]
    return respond


def grade(row, text):
    """(correct, formatted, read) of one response to one unified-schema row: 0.0/1.0, and read right as
    True/False when the row has perception values (VisualMath), else None."""
    parts = grading.compute_reward(text, row["answer"], row.get("choices"), precision=row.get("precision"))
    read = visualmath.read_right(text, row["perception"]) if row.get("perception") else None
    return parts["accuracy"], parts["format"], read


def graded(row, text):
    """One response for inspection: its verdicts, the answer the grader extracted, and the text itself."""
    correct, formatted, read = grade(row, text)
    return {"correct": correct, "format": formatted, "read_right": read, "extracted": grading.extract_answer(text),
            "response": text}


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
        is_choice = float(bool(row.get("choices")))
        has_perception = float(bool(row.get("perception")))
        counts["n"] += 1
        counts["n_choice"] += is_choice
        counts["n_perception"] += has_perception
        if greedy_texts is not None:
            correct, formatted, read = grade(row, greedy_texts[r])
            counts["greedy"] += correct
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
    [0.2571, 1.0]
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
                    "format": ratio(counts["greedy_format"], n),
                    "accuracy_multi_choice": ratio(counts["greedy_choice"], n_choice),
                    "accuracy_free_form": ratio(counts["greedy"] - counts["greedy_choice"], n_free)})
        if n_p:
            out.update({"read": ratio(counts["greedy_read"], n_p),
                        "lucky": ratio(counts["greedy_lucky"], counts["greedy_right_p"]) or 0.0})
    if k:
        out.update({f"avg@{k}": ratio(counts["sampled"], n), f"avg@{k}_ci": mean_interval(counts["sampled"], counts["sampled_sq"], n),
                    f"pass@{k}": ratio(counts["sampled_pass"], n), f"format@{k}": ratio(counts["sampled_format"], n),
                    f"avg@{k}_multi_choice": ratio(counts["sampled_choice"], n_choice),
                    f"avg@{k}_free_form": ratio(counts["sampled"] - counts["sampled_choice"], n_free)})
        if n_p:
            out.update({f"read@{k}": ratio(counts["sampled_read"], n_p),
                        f"lucky@{k}": ratio(counts["sampled_lucky"], counts["sampled_right_p"]) or 0.0})
    return out


def evaluate_rows(dataset, index, respond, greedy=True, k=0, temperature=0.0, batch_size=16, seed=0, show=3,
                  desc="eval", progress=True):
    """Counts and graded examples for dataset[i], i in `index` (this rank's share), in batches.

    respond(rows, keys, k, temperature) -> k texts per row (model_responder, or canned texts in tests).
    Keys depend on the global question index only, never on the rank or the position in a batch.
    The first `show` rows come back graded (response, extracted answer, verdict) for inspection.
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
        for r, row in enumerate(rows[:max(0, show - len(examples))]):
            ex = {"id": row["id"], "question": data.format_question(row), "answer": row["answer"],
                  "precision": row.get("precision"), "unit": row.get("unit")}
            if greedy_texts is not None:
                ex["greedy"] = graded(row, greedy_texts[r])
            if sampled_texts is not None:
                ex["samples"] = [graded(row, t) for t in sampled_texts[r]]
            examples.append(ex)
    return counts, examples


def evaluate(dataset, respond, rank=0, world=1, greedy=True, k=4, temperature=1.0, batch_size=64, seed=0, show=0,
             reduce=None, desc="eval", progress=False):
    """The one evaluator of train.py, tiny.py and eval.py: greedy accuracy and avg@k (k = 0: none) of `dataset`.

    Each rank scores questions rank, rank + world, ...; `reduce` sums a float64 tensor over ranks (None on
    one process). Returns summarize()'s metrics plus the graded examples of this rank under "examples".
    Keys depend only on the question's index, so successive evaluations of a changing policy share their
    sampling noise (common random numbers: the change in avg@k is the policy's, not the dice's).
    """
    index = list(range(rank, len(dataset), world))
    counts, examples = evaluate_rows(dataset, index, respond, greedy, k, temperature, batch_size, seed, show,
                                     desc=desc, progress=progress)
    # NOTE: sums, not per-rank means: ranks hold different numbers of questions when world does not divide N
    summed = torch.tensor([counts[c] for c in COUNT_KEYS], dtype=torch.float64)
    if reduce is not None:
        summed = reduce(summed)
    return {**summarize(dict(zip(COUNT_KEYS, summed.tolist())), greedy, k), "examples": examples}


def load_rows(name, cfg):
    """One benchmark as a unified-schema Dataset: a VisualMath held-out split (visualmath.TASKS) or data.load_benchmark."""
    if name in visualmath.TASKS:
        return visualmath.make(name, cfg.limit or 500, seed=cfg.visualmath_seed)
    return data.load_benchmark(name, split=cfg.split or None, schema=cfg.schema or None, limit=cfg.limit or None)


def format_table(results, k=0):
    """Fixed-width table, one row per benchmark; '-' where a metric does not apply."""
    columns = ["n", "accuracy", "accuracy_multi_choice", "accuracy_free_form", "format", "read", "lucky"]
    columns += [f"avg@{k}", f"pass@{k}"] if k else []
    header = ["benchmark", "n", "greedy", "multi-choice", "free-form", "format", "read", "lucky"] + columns[7:]
    lines = [f"{header[0]:<32}" + "".join(f"{h:>13}" for h in header[1:])]
    for name, res in results.items():
        cells = ["-" if res.get(c) is None else f"{res[c]:.4f}" if isinstance(res[c], float) else str(res[c])
                 for c in columns]
        lines.append(f"{name[-32:]:<32}" + "".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


def run_accuracy(cfg):
    """The accuracy table: every benchmark in --benchmark, this rank's share of it, counts summed over ranks."""
    rank, world, device = setup_distributed()
    model, tokenizer, image_processor = load_model(cfg.model, device, cfg.dtype)
    respond = model_responder(model, tokenizer, image_processor, cfg.max_new_tokens, cfg.top_p,
                              cfg.min_pixels, cfg.max_pixels)
    k = cfg.k if cfg.temperature > 0 else 0  # 0 = no sampled metrics (greedy only)
    results = {}
    for name in [b for b in cfg.benchmark.split(",") if b]:
        results[name] = evaluate(load_rows(name, cfg), respond, rank, world, bool(cfg.greedy), k, cfg.temperature,
                                 cfg.batch_size, cfg.seed, cfg.show, lambda t: all_reduce(t.to(device)).cpu(),
                                 desc=name[-30:], progress=rank == 0)
    if rank == 0:
        table = format_table(results, k)
        print(table)
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "world": world, "table": table, "results": results},
                      f, indent=1)
        print(f"saved {cfg.out}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return results

# --------------------------------------------------------------------------------------------------
# Connectivity report: pure helpers (alignment, precision/recall, bimodality), then plots and the page.
# --------------------------------------------------------------------------------------------------


def token_char_spans(tokenizer, ids):
    """(start, end) of each token's characters in tokenizer.decode(ids, skip_special_tokens=True).

    By incremental decoding (works for byte-level BPE without offset mappings); special tokens get an
    empty span. Quadratic in the response length, which is fine for a report.
    """
    ends = [len(tokenizer.decode(ids[:t + 1], skip_special_tokens=True)) for t in range(len(ids))]
    return [(ends[t - 1] if t else 0, ends[t]) for t in range(len(ids))]


def overlapping_tokens(token_spans, char_spans):
    """True for each token whose characters overlap any of char_spans (e.g. visualmath.locate_perception's).

    >>> overlapping_tokens([(0, 7), (7, 8), (8, 9), (9, 10), (10, 10)], [(7, 8), (9, 10)])
    [False, True, False, True, False]
    """
    return [any(s < ce and cs < e for cs, ce in char_spans) for s, e in token_spans]


def anchor_precision_recall(anchors, truth):
    """Micro-averaged precision/recall of anchor tokens against ground-truth tokens; both bool (B, T).

    Pass only valid tokens as True (padding False in both); None where there is nothing to divide by.
    >>> a = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0]]).bool()
    >>> t = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]]).bool()
    >>> anchor_precision_recall(a, t)
    {'precision': 0.6666666666666666, 'recall': 0.6666666666666666}
    """
    hits = float((anchors & truth).sum())
    n_anchors, n_truth = float(anchors.sum()), float(truth.sum())
    return {"precision": hits / n_anchors if n_anchors else None, "recall": hits / n_truth if n_truth else None}


def otsu_split(values):
    """(threshold, upper fraction): the cut of 1-D values that maximises the between-mode variance.

    Exact over the n - 1 cuts between sorted values (Otsu 1979 without binning); the threshold is the
    midpoint of the cut.
    >>> otsu_split(torch.tensor([.1, .12, .8, .11, .82]))
    (0.46, 0.4)
    """
    x = values.double().flatten().sort().values  # (n,)
    n = len(x)
    if n < 2 or x[0] == x[-1]:
        return float(x[0]) if n else 0.0, 0.0
    left = torch.arange(1, n, dtype=torch.float64)  # (n-1,) values below each cut
    csum = x.cumsum(0)[:-1]  # (n-1,)
    mean_low, mean_high = csum / left, (x.sum() - csum) / (n - left)
    between = left * (n - left) * (mean_low - mean_high) ** 2  # between-class variance x n^2
    between[x[1:] == x[:-1]] = -1  # no cut between equal values
    cut = int(between.argmax())
    return round(float((x[cut] + x[cut + 1]) / 2), 6), round((n - cut - 1) / n, 6)


def bimodality_coefficient(values):
    """(skewness^2 + 1) / kurtosis (population moments): 1 for two equal spikes, 5/9 uniform, 1/3 Gaussian.

    >>> bimodality_coefficient(torch.tensor([0., 0., 1., 1.]))
    1.0
    """
    x = values.double().flatten()
    z = x - x.mean()
    var = (z ** 2).mean()
    if len(x) < 3 or var == 0:
        return 0.0
    skew, kurt = (z ** 3).mean() / var ** 1.5, (z ** 4).mean() / var ** 2
    return round(float((skew ** 2 + 1) / kurt), 6)


def perception_tokens(tokenizer, ids, text, perception):
    """Per response token: does it write a value read off the image? ids -> list of bools; text is
    tokenizer.decode(ids, skip_special_tokens=True), perception the row's values.

    Where the response has a reasoning chain, its read operands are the perception tokens (visualmath.read_spans:
    by the chain's structure, so the "8" read in "8+8=16" counts and the carried "=8" does not, and a misread
    digit still counts: it was written from the image); otherwise the values are found by matching
    (visualmath.locate_perception)."""
    spans = visualmath.read_spans(text)
    if spans is None:
        spans = visualmath.locate_perception(text, perception)
    return overlapping_tokens(token_char_spans(tokenizer, ids), spans)


def report_batch(model, tokenizer, image_processor, rows, responses, max_new_tokens):
    """Prompt + response tensors for the probe: greedy "generated" responses or teacher-forced "reference" ones.

    Returns the model inputs, full_response_mask (B, S), response_mask (B, T) and prompt_len P; responses
    are right-padded after column P, so response token t sits at column P + t.
    """
    if responses == "generated":
        batch = rollout.sample_groups(model, tokenizer, image_processor, rows, 1, list(range(len(rows))),
                                      max_new_tokens, temperature=0.0)
    else:
        import tiny  # the SFT batch is exactly prompt + reference response + EOS, right-padded
        batch = tiny.sft_batch(tokenizer, image_processor, rows)
        labelled = batch.pop("labels") != -100  # (B, S) response tokens
        P = int(labelled.float().argmax(1).min())
        batch["full_response_mask"] = labelled  # every prompt ends at column P, so the response starts there
        batch["response_mask"], batch["prompt_len"] = batch["full_response_mask"][:, P:], P
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    return {k: batch[k] for k in keys}, batch["full_response_mask"], batch["response_mask"], batch["prompt_len"]


def analyse(model, tokenizer, image_processor, rows, cfg, queries):
    """Everything the report draws: {query: one dict per response (tokens, rho, anchors, clusters, truth, ...)}.

    Responses are built once per chunk; the probe then runs one forward per anchor query over the same tensors.
    """
    device = next(model.parameters()).device
    layers = list(connectivity.layer_band(cfg.probe_layers, model.config.text_config.num_hidden_layers))
    merge = image_processor.merge_size
    out = {query: [] for query in queries}
    for start in tqdm(range(0, len(rows), cfg.batch_size), desc="probe"):
        chunk = rows[start:start + cfg.batch_size]
        inputs, full_mask, resp_mask, P = report_batch(model, tokenizer, image_processor, chunk, cfg.responses,
                                                       cfg.max_new_tokens)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        responses = []  # what does not depend on the query: tokens, text, ground truth, image grid
        for b, row in enumerate(chunk):
            ids = inputs["input_ids"][b, P:][resp_mask[b].to(device)].tolist()
            text = tokenizer.decode(ids, skip_special_tokens=True)
            truth = perception_tokens(tokenizer, ids, text, row["perception"])
            _, h, w = inputs["image_grid_thw"][b].tolist()
            responses.append(dict(row=row, text=text, tokens=[tokenizer.decode([i]) for i in ids],
                                  truth=torch.tensor(truth, dtype=torch.bool), grid=(h // merge, w // merge)))
        for query in queries:
            patterns, rho = connectivity.image_attention(model, inputs, full_mask.to(device), layers, query,
                                                         bool(cfg.sink_debias), cfg.sink_outlier_k)
            patterns, rho = patterns.float().cpu(), rho.float().cpu()  # (B, T, V), (B, T)
            mask = resp_mask[:, :rho.shape[1]].bool()  # (B, T); response token t is column P + t
            anchors = atrl.select_anchors(rho, mask, cfg.anchor_frac)  # (B, T)
            clusters = atrl.cluster_tokens(patterns, mask, k=cfg.knn, resolution=cfg.resolution, seed=cfg.seed)
            for b, response in enumerate(responses):
                n, (gh, gw) = len(response["tokens"]), response["grid"]
                out[query].append(dict(response, rho=rho[b, :n], anchors=anchors[b, :n], clusters=clusters[b, :n],
                                       patterns=patterns[b, :n, :gh * gw]))  # image b's own V = gh * gw keys
    return out


def connectivity_summary(items):
    """The report's numbers for one anchor query, from analyse()'s per-response items."""
    scored = [it for it in items if it["truth"].any()]  # responses that wrote at least one perception value
    none = [torch.zeros(0, dtype=torch.bool)]
    anchors = torch.cat([it["anchors"] for it in scored] or none)  # (sum of T,) over scored responses
    truth = torch.cat([it["truth"] for it in scored] or none)
    rho = torch.cat([it["rho"] for it in items])
    threshold, upper = otsu_split(rho)
    return dict(responses=len(items), tokens=len(rho), responses_scored=len(scored),
                **anchor_precision_recall(anchors, truth), chance=float(truth.float().mean()) if len(truth) else None,
                otsu_threshold=threshold, upper_mode_fraction=upper, bimodality_coefficient=bimodality_coefficient(rho),
                anchor_fraction=sum(int(it["anchors"].sum()) for it in items) / max(1, len(rho)),
                clusters_per_response=sum(int(it["clusters"].max()) + 1 for it in items) / max(1, len(items)))


def plot_histogram(items, path, title):
    """rho of all tokens, perception tokens stacked on the others, with Otsu's split drawn."""
    import matplotlib.pyplot as plt

    rho = torch.cat([it["rho"] for it in items])
    truth = torch.cat([it["truth"] for it in items])
    threshold, upper = otsu_split(rho)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.hist([rho[~truth].numpy(), rho[truth].numpy()], bins=40, range=(0, max(1e-6, float(rho.max()))), stacked=True,
            color=["#9ecae1", "#e6550d"], label=["other tokens", "perception tokens (ground truth)"])
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"Otsu split {threshold:.3f}: upper mode {upper:.0%}")
    ax.set(xlabel="rho (debiased attention mass on the image)", ylabel="tokens", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overlay(image, attention, grid, path, title):
    """The image as the model saw it, and one token's attention over its merged patches drawn on top."""
    import matplotlib.pyplot as plt

    W, H = image.size
    gh, gw = grid
    fig, axes = plt.subplots(1, 2, figsize=(8, max(2.2, 4 * H / W + 0.8)))
    for ax in axes:
        ax.imshow(image, extent=(0, W, H, 0))
        ax.set_xticks([]), ax.set_yticks([])
    heat = axes[1].imshow(attention.reshape(gh, gw).numpy(), extent=(0, W, H, 0), cmap="inferno", alpha=0.6,
                          interpolation="nearest", vmin=0)
    if gh * gw <= 1024:  # the merged-patch grid, one cell per image token
        for x in range(1, gw):
            axes[1].axvline(x * W / gw, color="w", lw=0.3)
        for y in range(1, gh):
            axes[1].axhline(y * H / gh, color="w", lw=0.3)
    axes[0].set_title("image (as encoded)", fontsize=9)
    axes[1].set_title(title, fontsize=9)
    fig.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tokens_html(item, rho_max):
    """One response as coloured token boxes: background = rho, outline = anchor, underline = perception,
    subscript = Louvain cluster (coloured)."""
    import matplotlib

    cells = []
    for t, token in enumerate(item["tokens"]):
        alpha = float(item["rho"][t]) / rho_max if rho_max > 0 else 0.0
        c = int(item["clusters"][t])
        colour = matplotlib.colors.to_hex(matplotlib.colormaps["tab10"](c % 10)) if c >= 0 else "#999"
        style = f"background:rgba(230,85,13,{alpha:.3f});border-bottom:3px solid {colour};"
        if item["anchors"][t]:
            style += "outline:2px solid #000;font-weight:bold;"
        if item["truth"][t]:
            style += "text-decoration:underline double #2171b5;"
        label = html.escape(token.replace("\n", "\u23ce")) or "&nbsp;"
        cells.append(f'<span class="tok" style="{style}" title="t={t} rho={float(item["rho"][t]):.4f} '
                     f'cluster={c}">{label}<sub style="color:{colour}">{c}</sub></span>')
    return "".join(cells)


def write_page(cfg, summary, sections):
    """report.html: the summary table, a legend, then one section per anchor query (PNGs by relative path)."""
    def cell(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    keys = ["responses", "responses_scored", "tokens", "precision", "recall", "chance", "anchor_fraction",
            "upper_mode_fraction", "otsu_threshold", "bimodality_coefficient", "clusters_per_response"]
    rows = "".join(f"<tr><td>{q}</td>" + "".join(f"<td>{cell(s[k])}</td>" for k in keys) + "</tr>"
                   for q, s in summary.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>AT-RL connectivity report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}} .tok{{display:inline-block;margin:2px 1px;padding:2px 3px;
font-family:monospace;font-size:15px}} .resp{{border-top:1px solid #ddd;margin-top:1em}} .q{{color:#555;font-size:13px}}
img{{max-width:100%}}</style></head><body>
<h1>AT-RL connectivity report</h1>
<p>model <code>{html.escape(cfg.model or "tiny (default)")}</code>; {cfg.responses} responses to VisualMath (seed
{cfg.visualmath_seed}); probe layers {cfg.probe_layers}; sink debiasing {bool(cfg.sink_debias)};
anchors = top {cfg.anchor_frac:.0%} of each response's tokens by rho.</p>
<table><tr><th>query</th>{"".join(f"<th>{k.replace('_', ' ')}</th>" for k in keys)}</tr>{rows}</table>
<p>Precision/recall: anchors vs the tokens that write the values shown in the image (only responses that wrote at
least one; chance = precision of random anchors). Upper mode: tokens above Otsu's split of rho; a bimodality
coefficient above 5/9 hints at two modes.</p>
<p>Tokens: <span class="tok" style="background:rgba(230,85,13,1)">orange</span> = density rho (scaled to the
largest shown), <span class="tok" style="outline:2px solid #000;font-weight:bold">outlined</span> = anchor,
<span class="tok" style="text-decoration:underline double #2171b5">underlined</span> = perception token,
coloured bar and subscript = Louvain cluster. Hover a token for its numbers. Each image shows the attention of
the response's highest-rho token over the merged image patches.</p>
{"".join(sections)}
</body></html>"""
    with open(os.path.join(cfg.out_dir, "report.html"), "w", encoding="utf-8") as f:
        f.write(page)

def run_report(cfg):
    """The connectivity report: report.html + PNGs + report.json in cfg.out_dir. Returns the summary dict."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display

    _, _, device = setup_distributed()
    model, tokenizer, image_processor = load_model(cfg.model, device, cfg.dtype)
    os.makedirs(cfg.out_dir, exist_ok=True)
    dataset = visualmath.make(cfg.task, max(cfg.n_stats, cfg.n_show), seed=cfg.visualmath_seed)
    rows = [dataset[i] for i in range(len(dataset))]
    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    queries = cfg.anchor_query.split(",")
    analysed = analyse(model, tokenizer, image_processor, rows, cfg, queries)
    summary, sections = {}, []
    for query in queries:
        items = analysed[query]
        summary[query] = connectivity_summary(items)
        plot_histogram(items, os.path.join(cfg.out_dir, f"hist_{query}.png"),
                       f"density of {summary[query]['tokens']} response tokens, anchor_query={query}")
        rho_max = float(max(it["rho"].max() for it in items[:cfg.n_show]))
        blocks = []
        for i, it in enumerate(items[:cfg.n_show]):
            image = rollout.prepare_image(it["row"]["image"], size["shortest_edge"], size["longest_edge"], factor)
            t = int(it["rho"].argmax())  # the strongest anchor
            png = f"overlay_{query}_{i}.png"
            plot_overlay(image, it["patterns"][t], it["grid"], os.path.join(cfg.out_dir, png),
                         f"attention of token {it['tokens'][t]!r} (t={t}, rho={float(it['rho'][t]):.3f})")
            verdict = "correct" if grade(it["row"], it["text"])[0] else "wrong"
            blocks.append(f'<div class="resp"><p class="q">{html.escape(it["row"]["question"])} &mdash; gold '
                          f'{html.escape(it["row"]["answer"])}, values in the image '
                          f'{html.escape(", ".join(it["row"]["perception"]))}; this response is {verdict}</p>'
                          f'<p class="toks">{tokens_html(it, rho_max)}</p><img src="{png}" alt="{png}"></div>')
        sections.append(f'<h2>anchor_query = {query}</h2><img src="hist_{query}.png" alt="hist_{query}.png">'
                        + "".join(blocks))
    write_page(cfg, summary, sections)
    with open(os.path.join(cfg.out_dir, "report.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(cfg), "summary": summary}, f, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"wrote {os.path.join(cfg.out_dir, 'report.html')}")
    return summary


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
    cfg = parse_config(argv)
    if cfg.curves:
        print(f"wrote {plot_curves(cfg.curves.split(','), os.path.join(cfg.out_dir, 'curves.png'))}")
    elif cfg.report:
        run_report(cfg)
    else:
        run_accuracy(cfg)


if __name__ == "__main__":
    main()
