"""experiments/report.py -- which response tokens look at the image: the connectivity report, and its measuring helpers.

On VisualMath responses, per --anchor_query (predict / self): each token coloured by its image-attention
density rho (connectivity.image_attention), anchors (atrl.select_anchors) and Louvain clusters
(atrl.cluster_tokens) marked; the image with the strongest anchor's attention over its merged patches; the
histogram of rho with its two modes split; and anchor precision / recall against the tokens that write a
value read off the image (the perception tokens, known exactly on VisualMath):

    precision = |anchors & perception tokens| / |anchors|
    recall    = |anchors & perception tokens| / |perception tokens|
    chance    = |perception tokens| / |tokens|                    (the precision of random anchors)

written as one offline page, report.html, with PNGs next to it. experiments/v2.py measures the paper's claims
with the same helpers (token alignment, precision/recall, Otsu split, bimodality coefficient).

Where we choose (none of this is from the paper, which only reports "bimodal"):
  1. Bimodality of rho is judged by Otsu's split (the cut that maximises the between-mode variance) and the
     population bimodality coefficient (skew^2 + 1) / kurtosis (1 for two spikes, 5/9 for a uniform, 1/3 for
     a Gaussian; > 5/9 hints at two modes).
  2. Precision/recall count only responses that wrote at least one perception value; perception tokens are
     the read operands of a response's chain (visualmath.read_spans); token <-> character alignment is by
     incremental decoding.

References: Otsu 1979; SAS/Sarle's bimodality coefficient. Dimension letters: B responses, T response tokens,
V image tokens (merged patches).
Run it: `python experiments/report.py --model runs/default/checkpoint-40 --out_dir runs/default/report`
(`--model ""`: the embedded tiny model). Tests: `python -m pytest -q tests/test_eval.py -k report`.
"""
import dataclasses
import html
import json
import os
import re
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python experiments/report.py`: the repository root, not experiments/, heads the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import atrl
import connectivity
import eval as evaluation  # model loading
import rollout
from infra import cli, runs
from tasks import grading, visualmath

# --------------------------------------------------------------------------------------------------
# Config: one flat dataclass; every field becomes a --flag (cli.parse_config)
# --------------------------------------------------------------------------------------------------


@dataclass
class ReportConfig:
    # What to report on
    model: str = ""                 # checkpoint dir or hub id; "" = the embedded tiny model (built by models/tiny.py)
    out_dir: str = "runs/eval/report"  # report.html, report.json and the PNGs go here
    task: str = "visualmath"        # the VisualMath task the questions come from (visualmath | visualmath-v1 | ...)
    visualmath_seed: int = 10_000   # seed of the questions (train.py holds out its seed + 10000)
    responses: str = "generated"    # report on greedy "generated" responses or teacher-forced "reference" ones
    n_show: int = 4                 # responses drawn token by token
    n_stats: int = 64               # responses behind the histogram and precision/recall
    batch_size: int = 16            # responses per probed forward
    max_new_tokens: int = 1024      # budget of the generated responses
    dtype: str = "auto"             # auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float32
    # The probe, the anchors and the graph (train.py's flags of the same names)
    anchor_query: str = "predict,self"  # attention row(s) of token t: predict (query t-1), self (query t)
    anchor_frac: float = 0.15       # anchors = top fraction of each response's tokens by rho (train.py's default)
    probe_layers: str = "middle"    # early|middle|late third, all, or "4,5,6" (as train.py)
    sink_debias: int = 1            # 1 = drop the first-token sink and outlier image keys, renormalise
    sink_outlier_k: float = 5.0     # an image key is a sink if its mean attention > k x the median key's
    knn: int = 0                    # k of the kNN token graph; 0 = round(sqrt(n)) in [2, 10] (as train.py)
    resolution: float = 1.0         # Louvain resolution
    seed: int = 0                   # Louvain's seed


def parse_config(argv=None):
    """ReportConfig from the command line, every value checked up front (one line naming a bad one)."""
    cfg = cli.parse_config(ReportConfig, __doc__.split("\n")[0], "experiments/report.py", argv)
    runs.check_model("experiments/report.py", "model", cfg.model)
    cli.check("experiments/report.py", cfg, [
        ("task", cfg.task in visualmath.TASKS, f"use one of {', '.join(visualmath.TASKS)}"),
        ("responses", cfg.responses in ("generated", "reference"), "use 'generated' or 'reference'"),
        *[(n, getattr(cfg, n) >= 1, "must be >= 1") for n in ("n_stats", "batch_size", "max_new_tokens")],
        *[(n, getattr(cfg, n) >= 0, "must be >= 0") for n in ("n_show", "visualmath_seed", "seed", "knn")],
        ("anchor_query", set(cfg.anchor_query.split(",")) <= {"predict", "self"}, "a comma-separated subset of predict,self"),
        ("anchor_frac", 0 < cfg.anchor_frac <= 1, "must be in (0, 1]"),
        ("probe_layers", cfg.probe_layers in ("early", "middle", "late", "all") or re.fullmatch(r"\d+(,\d+)*", cfg.probe_layers),
         "use early, middle, late, all or a comma list of layer indices like 4,5,6"),
        ("sink_debias", cfg.sink_debias in (0, 1), "use 0 or 1"),
        ("sink_outlier_k", cfg.sink_outlier_k > 0, "must be > 0 (default 5)"),
        ("resolution", cfg.resolution > 0, "must be > 0 (1.0 = standard modularity)"),
        ("dtype", cfg.dtype in ("auto", "bfloat16", "float32"), "use auto, bfloat16 or float32"),
    ])
    return cfg


# --------------------------------------------------------------------------------------------------
# Measuring helpers: alignment, precision/recall, bimodality, the batch the probe reads
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
        batch = rollout.sft_batch(tokenizer, image_processor, rows)  # prompt + reference response + EOS, right-padded
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

def run_report(cfg, model, tokenizer, image_processor):
    """The connectivity report of a loaded model: report.html + PNGs + report.json in cfg.out_dir (cfg: a
    ReportConfig). Returns the summary dict."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display

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
            correct = grading.compute_reward(it["text"], it["row"]["answer"])["accuracy"]
            verdict = "correct" if correct else "wrong"
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


if __name__ == "__main__":
    config = parse_config()
    report_device = runs.setup_distributed()[3]
    run_report(config, *evaluation.load_model(config.model, report_device, config.dtype))
