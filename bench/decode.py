"""Benchmark: rollout decoding -- engine.py against transformers' generate, and against the bandwidth floor.

Two questions, two modes:

default (CPU)   Is the engine at least as fast as today's path on the tiny default? The tiny model train.py uses
                (tiny.DEFAULT_DIR if built, else a random checkpoint) at train.py's rollout shape: 16 grid prompts
                x G 8 = 128 rollouts, 40 new tokens, temperature 1. Each round decodes the same batch with
                rollout.generate(engine=None) (transformers' generate + GumbelSampler: "hf") and with the engine,
                in alternating order, and checks that the responses are identical; then the same for the whole
                rollout as train.py times it (rollout.sample_groups: encoding + decoding). Reported: medians and
                the paired median of t(hf) / t(engine) over the rounds (noise hits both arms of a round).

--config 3b     How close to the memory-bandwidth floor does a decode step run? Qwen2.5-VL-3B's config with random
(GPU)           bf16 weights (bench/common.py), prompts of 1,026 tokens (<|vision_start|>, 1,024 image tokens =
                a 32 x 32 merged grid, <|vision_end|>), G = 8 samples per prompt, --new_tokens 256, at each batch
                of --batches (16, 64, 256), printed the moment it is measured:

                    ms per decode step = (t(new_tokens) - t(1 token)) / (new_tokens - 1)   (prefill cancels out)
                    tokens/s           = batch / ms per step
                    floor              = (LM weight bytes + KV cache bytes read per step) / bandwidth
                                         (KV: batch x the mean attended length x layers x 2 x kv heads x head dim)
                    x floor            = ms per step / floor

                and for "hf" (today's rollout.generate) at the first batch only, over --hf_new_tokens (it is slow).
                The exactness check runs first (a correctness row before any speed row; --exactness only: nothing
                else, none: skip it): the engine with CUDA graphs replayed and with the same step run eagerly
                decode the same ids (every length bucket of the run is crossed), and the attention kernels that
                prefill and step ran are printed (the eager run, recorded: ops/sdpa.py; train.py's choice). The bandwidth is --bandwidth_gbs,
                or measured here with a large device-to-device copy (bytes read + bytes written / time).
                --shrink runs this path on a CPU in a minute or two (2 decoder layers, a 64-token image, batches
                2 and 4, 8 new tokens): a smoke test of the code, not a measurement.

--config qwen3-4b   The same for Qwen3-VL-4B-Instruct's config (bench/common.py): head_dim 128 with 32 query / 8 KV
(GPU)               heads, so the KV cache is 144 KiB per token in bf16 (Qwen2.5-VL-3B: 36 KiB) and the q/k norms
                    run in every step. Unmeasured until a GPU runs it (docs/families.md).

--budget_s N stops measuring once N seconds have passed (a measurement under way finishes), prints what was
measured and names what was skipped. The table goes to stdout and, with --out FILE, to FILE (markdown).

Where this departs from train.py: the 3B model is random and built directly in bf16 (train.py with --bf16 1
decodes from a bf16 copy of fp32 weights: the same bytes per step); its prompts are synthetic and EOS is rare,
so every row decodes all new tokens (the worst case). The engine keeps its CUDA graphs between calls, as in
training: the first call of each shape (capture) is a warm-up and is not timed.

Run (from the repository root):
    OMP_NUM_THREADS=1 nice -n 10 python bench/decode.py              # CPU, tiny: engine vs hf side by side
    python bench/decode.py --device cuda --config 3b --out decode.md  # GPU: ms/step vs the floor
    python bench/decode.py --config 3b --shrink                       # the 3B code path on a CPU (smoke test)
    python bench/decode.py --device cuda --config qwen3-4b            # GPU: Qwen3-VL-4B's decode step vs the floor
"""

import common  # first: it puts the repository root on sys.path (see its docstring)

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch

import engine
import rollout
from models import family
from ops import sdpa
from tasks import visualmath

# ------------------------------------------------------------------------------------------- config

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--config", default="tiny", choices=["tiny", "3b", "qwen3-4b"], help="model sizes (bench/common.py)")
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--model", default="", help="tiny checkpoint dir; '' = tiny.DEFAULT_DIR if built, else a random one")
parser.add_argument("--prompts", type=int, default=16, help="tiny: prompts per rollout batch (train.py --prompts_per_step)")
parser.add_argument("--group_size", type=int, default=8, help="G samples per prompt (train.py default)")
parser.add_argument("--max_new_tokens", type=int, default=40, help="tiny: response budget (train.py default)")
parser.add_argument("--repeats", type=int, default=0, help="interleaved rounds (tiny, default 7) / timed rounds per "
                    "point (3b, default 3; hf at most 2)")
parser.add_argument("--threads", type=int, default=1, help="CPU torch threads (train.py --cpu_threads default)")
parser.add_argument("--new_tokens", type=int, default=256, help="3b: tokens decoded per call")
parser.add_argument("--hf_new_tokens", type=int, default=64, help="3b: tokens per hf call (its ms/step barely moves)")
parser.add_argument("--batches", default="16,64,256", help="3b: comma list of rollout batch sizes")
parser.add_argument("--image_side", type=int, default=32, help="3b: image of side x side merged tokens (32: 1,024)")
parser.add_argument("--bandwidth_gbs", type=float, default=0.0, help="3b: memory bandwidth in GB/s for the floor "
                    "(H100 SXM 3350, H200 4800); 0 = measure a device-to-device copy here")
parser.add_argument("--shrink", action="store_true", help="3b: 2 layers, 64 image tokens, batches 2,4, 8 tokens (CPU)")
parser.add_argument("--budget_s", type=float, default=0.0, help="stop measuring after this many seconds (0 = no limit)")
parser.add_argument("--exactness", default="first", choices=["first", "only", "none"],
                    help="3b: the graph-replay = eager check before the speed rows, alone, or not at all")
parser.add_argument("--out", default="", help="also write the markdown table to this file")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

device = torch.device(args.device)
if device.type == "cuda" and not torch.cuda.is_available():
    print("bench/decode.py: --device cuda but CUDA is not available here -- skipped (nothing measured)")
    sys.exit(0)
if args.config != "tiny" and device.type == "cpu" and not args.shrink:
    print(f"bench/decode.py: --config {args.config} needs --device cuda (a 3B decode on a CPU takes hours) -- skipped; "
          "use --shrink to smoke-test the code path on CPU")
    sys.exit(0)
if device.type == "cpu" and args.threads > 0:
    torch.set_num_threads(args.threads)
args.repeats = args.repeats or (7 if args.config == "tiny" else 3)
if args.shrink:
    args.batches, args.new_tokens, args.hf_new_tokens, args.image_side = "2,4", 8, 8, 8
    args.group_size = min(args.group_size, 2)
START = time.perf_counter()


def over_budget():
    return args.budget_s > 0 and time.perf_counter() - START > args.budget_s


def timed(fn):
    """(seconds, fn()) with the device's queue drained on both sides of the clock."""
    common.sync(device)
    t0 = time.perf_counter()
    out = fn()
    common.sync(device)
    return time.perf_counter() - t0, out


def report(lines):
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}")

# ------------------------------------------------------------------------------------------- tiny (CPU)


def tiny_side_by_side():
    """hf vs engine at train.py's rollout shape, interleaved rounds, paired ratios, identical responses."""
    from models import tiny

    model_dir = args.model or (tiny.DEFAULT_DIR if os.path.exists(os.path.join(tiny.DEFAULT_DIR, "sft_report.json"))
                               else tiny.make_random_checkpoint(tempfile.mkdtemp(prefix="decode-bench-")))
    model = family.load_model(model_dir).to(device).eval()  # its family's class (a tiny Qwen3-VL works too)
    tokenizer, image_processor = family.load_processor(model_dir)
    min_pixels, max_pixels = family.pixel_bounds(image_processor, 0, 0, 512, "bench/decode.py")  # train.py's
    rows = visualmath.make("visualmath", args.prompts, seed=args.seed)
    rows = [rows[i] for i in range(args.prompts)]
    prompt_keys = [(args.seed + 1) * 1_000_000_007 + j for j in range(args.prompts)]  # as train.py's
    keys = [k * args.group_size + j for k in prompt_keys for j in range(args.group_size)]
    enc = rollout.encode_prompts(tokenizer, image_processor, [r["image"] for r in rows],
                                 [r["question"] for r in rows], min_pixels, max_pixels)
    decoder = engine.DecodeEngine(model)
    arms = {"hf": None, "engine": decoder}
    jobs = {  # what is timed: decoding alone, and the rollout as train.py's time_rollout sees it
        "decoding (rollout.generate)": lambda eng: rollout.generate(
            model, tokenizer, enc, args.max_new_tokens, 1.0, 1.0, keys, group_size=args.group_size, engine=eng)[0],
        "rollout (rollout.sample_groups)": lambda eng: rollout.sample_groups(
            model, tokenizer, image_processor, rows, args.group_size, prompt_keys, args.max_new_tokens,
            min_pixels=min_pixels, max_pixels=max_pixels, engine=eng)["input_ids"]}
    print(common.machine_line(device))
    print(f"model {model_dir}; {args.prompts} prompts x G {args.group_size} = {len(keys)} rollouts, "
          f"{args.max_new_tokens} new tokens, temperature 1; {args.repeats} interleaved rounds", flush=True)
    for job in jobs.values():  # warm-up: first calls allocate the engine's buffers and fill caches
        [job(eng) for eng in arms.values()]
    times = {(j, a): [] for j in jobs for a in arms}
    same, skipped = {j: True for j in jobs}, 0
    for r in range(args.repeats):
        if over_budget():
            skipped = args.repeats - r
            break
        for j, job in jobs.items():
            order = list(arms) if r % 2 == 0 else list(arms)[::-1]
            outputs = {}
            for a in order:
                seconds, outputs[a] = timed(lambda: job(arms[a]))
                times[(j, a)].append(seconds)
            same[j] &= torch.equal(outputs["hf"], outputs["engine"])
        print(f"round {r}: " + "; ".join(f"{j.split()[0]} hf {1e3 * times[(j, 'hf')][-1]:.0f} ms, engine "
                                         f"{1e3 * times[(j, 'engine')][-1]:.0f} ms" for j in jobs), flush=True)
    lines = ["| measured | hf (generate) | engine | hf / engine, paired median [min, max] | same responses |",
             "|---|---|---|---|---|"]
    for j in jobs:
        hf, ours = times[(j, "hf")], times[(j, "engine")]
        if not hf:
            continue
        ratios = [a / b for a, b in zip(hf, ours)]
        lines.append(f"| {j} | {1e3 * statistics.median(hf):.0f} ms | {1e3 * statistics.median(ours):.0f} ms | "
                     f"**{statistics.median(ratios):.2f}** [{min(ratios):.2f}, {max(ratios):.2f}] | "
                     f"{'yes' if same[j] else 'NO'} |")
    if skipped:
        lines.append(f"\n(budget {args.budget_s:.0f} s reached: {skipped} of {args.repeats} rounds skipped)")
    report(lines)

# ------------------------------------------------------------------------------------------- 3b (GPU)


class SyntheticTokens:
    """What rollout.generate asks of a tokenizer, for the synthetic 3B batches: EOS ids (Qwen's; the top two ids
    of a --shrink model's smaller vocabulary), the pad id and the vision special tokens (bench/common.py's ids), so
    the hf and engine paths run exactly as in training."""

    def __init__(self, vocab_size):
        self.ids = {"<|im_end|>": min(151645, vocab_size - 1), "<|endoftext|>": min(151643, vocab_size - 2)}
        self.pad_token_id = self.ids["<|endoftext|>"]

    def convert_tokens_to_ids(self, token):
        return self.ids[token]

    def get_vocab(self):
        return {"<|vision_start|>": common.V_START, "<|vision_end|>": common.V_END, "<|image_pad|>": common.IMAGE}


def synthetic_prompts(model, n_prompts, side, seed=0):
    """n_prompts prompts: <|vision_start|>, side*side image tokens, <|vision_end|> (encode_prompts' layout)."""
    vc = model.config.vision_config
    ids = torch.tensor([common.V_START] + [common.IMAGE] * side * side + [common.V_END])
    input_ids = ids.repeat(n_prompts, 1)                                                     # (P, S)
    grid = torch.tensor([[1, side * vc.spatial_merge_size, side * vc.spatial_merge_size]] * n_prompts)
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == common.IMAGE).long(), "image_grid_thw": grid,
            "pixel_values": torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=g)}


def measure_bandwidth():
    """GB/s of a large device-to-device copy: (bytes read + bytes written) / time, best of 5."""
    n = (1 << 30) if device.type == "cuda" else (1 << 27)  # 1 GiB on a GPU, 128 MiB on a CPU (int8 elements)
    src, dst = torch.empty(n, dtype=torch.int8, device=device), torch.empty(n, dtype=torch.int8, device=device)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src))[0] for _ in range(5))
    return 2 * n / best / 1e9


def decode_3b():
    text, vision = common.model_sizes(args.config, args.shrink)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = common.build_model(text, vision, dtype, device, seed=args.seed, model_type=common.FAMILY[args.config]).eval()
    lm = model.model.language_model
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.layers.parameters())
    weight_bytes += sum(p.numel() * p.element_size() for p in (*lm.norm.parameters(), model.lm_head.weight))
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]  # Qwen3-VL states it
    kv_per_token = 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * torch.finfo(dtype).bits // 8
    bandwidth = args.bandwidth_gbs or measure_bandwidth()
    prompt = args.image_side ** 2 + 2
    tokens = SyntheticTokens(text["vocab_size"])
    print(common.machine_line(device))
    name = {"3b": "Qwen2.5-VL-3B", "qwen3-4b": "Qwen3-VL-4B"}[args.config]
    print(f"{name} config{' (shrunk: 2 layers, 16k vocabulary)' if args.shrink else ''}, random {str(dtype)[6:]} weights; "
          f"LM weights {weight_bytes / 1e9:.2f} GB read per step; KV cache {kv_per_token / 1e3:.1f} kB per token; "
          f"prompt {prompt} tokens ({args.image_side ** 2} image), G {args.group_size}; bandwidth {bandwidth:.0f} GB/s "
          f"({'given' if args.bandwidth_gbs else 'measured: device-to-device copy'})", flush=True)

    def floor_ms(batch, new_tokens):
        mean_length = prompt + (new_tokens + 1) / 2  # keys attended by the average step
        return 1e3 * (weight_bytes + batch * mean_length * kv_per_token) / (bandwidth * 1e9)

    def per_step(decoder, batch, new_tokens):
        """Median ms per decode step over timed rounds, after one untimed call (allocation, graph capture)."""
        group = min(args.group_size, batch)
        enc = synthetic_prompts(model, batch // group, args.image_side, args.seed)
        keys = list(range(batch))

        def call(n):
            return rollout.generate(model, tokens, enc, n, 1.0, 1.0, keys, group_size=group, engine=decoder)[0]
        with kernels.once("hf generate") if decoder is None else contextlib.nullcontext():  # untimed: eager, seen
            call(new_tokens)
        steps = []
        for _ in range(max(1, args.repeats if decoder is not None else min(args.repeats, 2))):
            t_full, t_one = timed(lambda: call(new_tokens))[0], timed(lambda: call(1))[0]
            steps.append(1e3 * (t_full - t_one) / (new_tokens - 1))
            if over_budget():
                break
        return statistics.median(steps)

    batches = [int(b) for b in args.batches.split(",")]
    decoder = engine.DecodeEngine(model)
    kernels = sdpa.Kernels(sdpa.setup(device))  # as train.py chooses (cuDNN off below cuDNN 9.26)
    plan = [("engine", b) for b in batches]
    plan.insert(1, ("hf", batches[0]))  # hf next to the engine at the first batch: the speed-up
    plan = {"first": [("exactness", batches[0])] + plan, "only": [("exactness", batches[0])], "none": plan}[args.exactness]
    if args.exactness == "none":  # the kernels of the engine's prefill and step, from two eager tokens (a replay hides them)
        enc = synthetic_prompts(model, 1, args.image_side, args.seed)
        with kernels.record("prefill + step"):
            rollout.generate(model, tokens, enc, 2, 1.0, 1.0, [0], engine=engine.DecodeEngine(model, cuda_graphs=False))
    lines = ["| decoder | batch | ms / decode step | tokens / s | floor (ms) | x floor | note |",
             "|---|---|---|---|---|---|---|"]
    skipped = []
    for what, batch in plan:
        if over_budget():
            skipped.append(f"{what} at batch {batch}")
            continue
        if what == "exactness":  # graph replay against the same step run eagerly (same buckets, same ids?)
            eager = engine.DecodeEngine(model, cuda_graphs=False)
            group = min(args.group_size, batch)
            enc = synthetic_prompts(model, batch // group, args.image_side, args.seed + 1)
            with kernels.record("prefill + step"):  # eager: every kernel is seen (a graph replay shows none)
                ids = [rollout.generate(model, tokens, enc, args.new_tokens, 1.0, 1.0, list(range(batch)),
                                        group_size=group, engine=eager)[0]]
            ids += [rollout.generate(model, tokens, enc, args.new_tokens, 1.0, 1.0, list(range(batch)), group_size=group,
                                     engine=decoder)[0] for _ in range(2)]
            same = torch.equal(ids[0], ids[1]) and torch.equal(ids[0], ids[2])
            graphs = decoder.stats["captures"]
            line = (f"| graphs vs eager step | {batch} | | | | | {'**bit-exact**' if same else '**DIFFER**'}: same ids "
                    f"over {args.new_tokens} tokens ({graphs} graphs captured"
                    f"{'' if decoder.cuda_graphs else '; no CUDA here: eager vs eager'}) |")
            print(f"sdpa kernels ({kernels.setup['line']}): {kernels.name('prefill + step')} -- every row of this "
                  "table", flush=True)
        else:
            new_tokens = args.new_tokens if what == "engine" else args.hf_new_tokens
            ms = per_step(decoder if what == "engine" else None, batch, new_tokens)
            floor = floor_ms(batch, new_tokens)
            line = (f"| {what} | {batch} | {ms:.2f} | {batch / ms * 1e3:,.0f} | {floor:.2f} | **{ms / floor:.1f}** | "
                    f"{new_tokens} new tokens |")
        lines.append(line)
        print(line, flush=True)
    if skipped:
        lines.append(f"\nskipped (budget {args.budget_s:.0f} s reached): {', '.join(skipped)}")
    if kernels.phases:
        lines.append(f"\nsdpa kernels ({kernels.setup['line']}): engine {kernels.name('prefill + step')}"
                     + (f"; hf {kernels.name('hf generate')}" if "hf generate" in kernels.phases else ""))
    report(lines)


if __name__ == "__main__":
    with torch.no_grad():
        tiny_side_by_side() if args.config == "tiny" else decode_3b()
