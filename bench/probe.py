"""Benchmark: what the attention probe (connectivity.py) adds to a forward, in time and peak memory.

For each model and batch shape we time one forward (no_grad, full logits, as the old-log-prob forward of an
RL step) in five settings, interleaved round by round so that machine noise hits all of them alike:
    sdpa          the model as loaded
    probe mid     probe on the middle third of decoder layers (connectivity's default), armed on every
                  response token
    probe all     probe on every decoder layer
    probe mid, chunk 2^23 / 2^16   the middle third with larger / smaller score blocks (memory vs time)
overhead = median over rounds of (time with probe / time without, same round) - 1; on a busy machine the
ratio of the best rounds (least disturbed) is printed too, and on CPU the wall time spent inside the probe's
own code, which is the least noisy of the three.
Peak memory is measured once per setting: torch.cuda.max_memory_allocated on GPU; on CPU the high-water
mark of torch's own allocations during the forward, replayed from the profiler's memory events.

Models: the tiny Qwen2.5-VL of models/tiny.py (random weights, fp32, CPU) and, when CUDA is present, the
Qwen2.5-VL-3B-Instruct config with random weights in bf16 (~1k image tokens, ~1k response tokens).
Without a GPU the 3B case prints an analytic FLOP estimate (probe vs forward) instead.

Run (from the repository root):
      OMP_NUM_THREADS=1 python bench/probe.py                 # tiny on CPU (+ 3B on GPU if present)
      python bench/probe.py --suite 3b --shrink                # smoke-test the 3B code path on CPU

Measured 2026-11-25, `nice -n 10 OMP_NUM_THREADS=1 python bench/probe.py --repeats 31`, 1 thread on a 2-core VM
shared with ~6 busy sessions (load 5-6): rounds vary by +-20-40%, so the end-to-end columns cannot resolve a
few percent; the time inside the probe is the reliable figure. No GPU was available: the 3B rows are estimates.

| shape (probe on the middle third = 2 of 4 layers) | inside probe / forward | end-to-end, paired median | peak |
|---|---|---|---|
| tiny, task-like: B=8, S=78, 4 image, 32 response tokens | 2.0%, 2.2% (2 runs) | +12%, +11% (rounds +-30%) | +0.2% |
| tiny, long: B=4, S=554, 256 image, 256 response tokens | 10.0%, 8.5% | +13%, +11% | +5% (2^23 chunks: +60%) |
| 3B estimate: B=4, S=2114, 1024 image, 1024 response | FLOPs 0.42% (all layers 1.27%) | H100 roofline guess ~7% of a no-grad forward, ~2.4% of fwd+bwd | 2 x 32 MiB blocks |

Why: the probe redoes QK^T + softmax for T of S rows of each selected layer in fp32, i.e. about
(selected/L) x (T/S) x (the attention share of the forward). The tiny model at S=554 spends ~40% of a layer in
attention, so the long case cannot reach 3% this way; on the 3B model the FLOPs are small but the fp32 score
blocks' memory traffic is not. Levers not taken (no GPU to test): TF32 for the probe's matmul (exact when q/k
are bf16), and reading the kernel's own logsumexp (flash/efficient attention return it) so that only the V image
columns need scoring.
"""

import common  # first: it puts the repository root on sys.path (see its docstring)

import argparse
import contextlib
import functools
import statistics
import time

import torch

import connectivity
from ops import sdpa
from common import IMAGE, V_END, V_START, build_model, model_sizes, peak_bytes, sync
from connectivity import default_layers, probe, query_positions

# ----------------------------------------------------------------------------- config

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--suite", default="all", choices=["tiny", "3b", "all"], help="which models to run")
parser.add_argument("--repeats", type=int, default=9, help="timed rounds per shape (median reported)")
parser.add_argument("--shrink", action="store_true", help="3B config with 2 layers and small inputs (smoke test)")
args = parser.parse_args()

# ----------------------------------------------------------------------------- helpers


def make_batch(config, B, grid_side, prompt_len, response_len, device, dtype):
    """[left pad | text, image, text | response | right pad]; rollout b is 8*b tokens shorter (padding both sides)."""
    merge, patch = config.vision_config.spatial_merge_size, config.vision_config.patch_size
    n_image = grid_side * grid_side // merge**2
    S = prompt_len + n_image + 2 + response_len
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(100, 400, (B, S), generator=g)  # (B, S) text ids
    attention_mask = torch.ones(B, S, dtype=torch.long)
    response_mask = torch.zeros(B, S, dtype=torch.bool)
    P = S - response_len
    for b in range(B):
        pad = 4 * b  # each side
        input_ids[b, pad + 4] = V_START
        input_ids[b, pad + 5:pad + 5 + n_image] = IMAGE
        input_ids[b, pad + 5 + n_image] = V_END
        attention_mask[b, :pad] = 0
        attention_mask[b, S - pad:] = 0
        response_mask[b, P:S - pad] = True
    grids = torch.tensor([[1, grid_side, grid_side]] * B)
    patch_dim = 3 * config.vision_config.temporal_patch_size * patch * patch
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, image_grid_thw=grids,
                  mm_token_type_ids=(input_ids == IMAGE).int(),
                  pixel_values=torch.randn(B * grid_side * grid_side, patch_dim, generator=g).to(dtype))
    return {k: v.to(device) for k, v in inputs.items()}, response_mask.to(device)


def run(model, inputs, response_mask, p=None):
    """One forward; with an installed probe p, armed on every response token and read out (as train.py: the
    probe is installed once per run, armed once per forward)."""
    with torch.no_grad():
        if p is not None:
            p.arm(query_positions(response_mask), inputs["input_ids"] == IMAGE)
        logits = model(**inputs).logits
        if p is not None:
            p.result()
        return logits


@contextlib.contextmanager
def installed(model, layers, chunk_elements):
    """The probe installed on `layers` for the block (None: nothing installed, the plain sdpa model)."""
    if layers is None:
        yield None
    else:
        with probe(model, layers, None if chunk_elements == "rows" else chunk_elements) as p:
            p.use_kernel_lse = chunk_elements != "rows"  # "rows": the whole-row read (no kernel log-sum-exp)
            yield p


def flops(text, vision, B, S, T, n_patches, probe_layers, n_image):
    """Analytic matmul FLOPs of one forward and of the probe (2 per multiply-add)."""
    d, I, L, H, Hkv = (text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "num_key_value_heads"))
    Dh = d // H
    per_token = 2 * (d * H * Dh + 2 * d * Hkv * Dh + H * Dh * d + 3 * d * I)  # q, k, v, o, gated MLP
    attention = 2 * H * Dh * S * S  # QK^T and PV, causal half: 2 * 2 * H * Dh * S^2 / 2
    decoder = B * (L * (S * per_token + attention) + 2 * S * d * text["vocab_size"])
    dv, Iv, depth = vision["hidden_size"], vision["intermediate_size"], vision["depth"]
    window = (vision["window_size"] // vision["patch_size"]) ** 2  # patches per attention window
    per_patch = 2 * (4 * dv * dv + 3 * dv * Iv)
    n_full = len(vision["fullatt_block_indexes"])
    vit = depth * n_patches * per_patch + 4 * dv * n_patches * (n_full * n_patches // B + (depth - n_full) * window)
    vit += 2 * (n_patches // 4) * (16 * dv * dv + 4 * dv * vision["out_hidden_size"])  # patch merger MLP
    # the column read (the kernel's log-sum-exp reused): T rows x (V image keys + the sink) of q.k and exp
    probe_cost = probe_layers * B * T * H * (n_image + 1) * (2 * (Dh + 1) + 2)
    return decoder + vit, probe_cost


class CaptureTimer:
    """Wall time spent inside Probe._capture (CPU only: there it is synchronous, so this is the probe's own cost)."""

    def __init__(self):
        self.seconds, self._inner = 0.0, connectivity.Probe._capture

    def __enter__(self):
        def timed_capture(probe_self, *a):
            t0 = time.perf_counter()
            self._inner(probe_self, *a)
            self.seconds += time.perf_counter() - t0
        connectivity.Probe._capture = timed_capture
        return self

    def __exit__(self, *exc):
        connectivity.Probe._capture = self._inner


def peak_of(model, inputs, response_mask, layers, chunk, device):
    """Peak memory of one forward with the probe installed on `layers` (installed outside the measurement)."""
    with installed(model, layers, chunk) as p:
        return peak_bytes(functools.partial(run, model, inputs, response_mask, p), device)


def bench(name, text, vision, dtype, device, shapes):
    model = build_model(text, vision, dtype, device).eval()  # in place, in dtype, tied embeddings (common.py)
    L = text["num_hidden_layers"]
    mid = list(default_layers(L))
    # (name, layers, chunk_elements): the small-chunk row shows the memory/time trade-off of the chunk size
    settings = [("sdpa", None, None), ("probe mid", mid, None), ("probe all", list(range(L)), None),
                ("probe mid, whole rows", mid, "rows"), ("probe mid, chunk 2^23", mid, 2**23),
                ("probe mid, chunk 2^16", mid, 2**16)]
    for B, side, prompt_len, response_len in shapes:
        inputs, response_mask = make_batch(model.config, B, side, prompt_len, response_len, device, dtype)
        S, T = inputs["input_ids"].shape[1], int(response_mask.sum(1).max())
        n_image = side * side // 4
        print(f"\n{name} on {device.type} ({dtype}), B={B} S={S} image tokens={n_image} response tokens<={T}, "
              f"{args.repeats} rounds", flush=True)
        row_reads = {}  # layers read through whole rows (no log-sum-exp from the kernel), per setting
        kernels, probed = sdpa.Kernels(sdpa.setup(device)), None  # as train.py chooses (cuDNN off below 9.26)
        for s, layers, chunk in settings:  # warm-up (allocator, kernels, lazy init); the first one's kernels kept
            with installed(model, layers, chunk) as p, kernels.once("forward"):
                run(model, inputs, response_mask, p)
                row_reads[s] = "-" if p is None else f"{p.row_reads} of {p.captures}"
            probed = probed or p  # the first probe (probe mid): which kernel's log-sum-exp it read
        times = {s[0]: [] for s in settings}
        inside = {s[0]: [] for s in settings}  # seconds inside the probe per forward (CPU)
        for r in range(args.repeats):
            for s, layers, chunk in settings[r % len(settings):] + settings[:r % len(settings)]:  # rotate order
                with installed(model, layers, chunk) as p:  # installed outside the clock, as train.py does once
                    sync(device)
                    with CaptureTimer() as timer:
                        t0 = time.perf_counter()
                        run(model, inputs, response_mask, p)
                        sync(device)
                        times[s].append(time.perf_counter() - t0)
                    inside[s].append(timer.seconds)
            print(f"  round {r + 1}/{args.repeats}: " + ", ".join(
                f"{s} {1e3 * times[s][-1]:.1f} ms" + ("" if s == "sdpa" else f" ({100 * (times[s][-1] / times['sdpa'][-1] - 1):+.1f}%)")
                for s, _, _ in settings), flush=True)

        peaks = {s: peak_of(model, inputs, response_mask, layers, chunk, device) for s, layers, chunk in settings}
        print("| setting | layers | median ms | overhead (paired median) [min, max] | overhead (best of "
              "rounds) | time inside probe / sdpa forward | peak MiB | peak vs sdpa | whole-row reads |")
        print("|---|---|---|---|---|---|---|---|---|")
        for s, layers, _ in settings:
            ratios = [t / base for t, base in zip(times[s], times["sdpa"])]
            own = [t / base for t, base in zip(inside[s], times["sdpa"])]
            n = "-" if layers is None else len(layers)
            print(f"| {s} | {n} | {1e3 * statistics.median(times[s]):.1f} | "
                  f"{100 * (statistics.median(ratios) - 1):+.2f}% [{100 * (min(ratios) - 1):+.1f}, "
                  f"{100 * (max(ratios) - 1):+.1f}] | {100 * (min(times[s]) / min(times['sdpa']) - 1):+.2f}% | "
                  f"{'n/a (async)' if device.type == 'cuda' else f'{100 * statistics.median(own):.2f}%'} | "
                  f"{peaks[s] / 2**20:.1f} | {100 * (peaks[s] / peaks['sdpa'] - 1):+.2f}% | {row_reads[s]} |")
        fixed = []  # install + arm + restore without a forward: the probe's per-step fixed cost
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with probe(model, mid) as p:
                p.arm(query_positions(response_mask), inputs["input_ids"] == IMAGE)
            fixed.append(time.perf_counter() - t0)
        print(f"install + arm + restore (no forward): {1e3 * statistics.median(fixed):.2f} ms "
              f"= {100 * statistics.median(fixed) / statistics.median(times['sdpa']):.2f}% of the sdpa forward")
        summary = kernels.summary(probed)
        print(f"sdpa kernels ({kernels.setup['line']}): forward (decoder and vision) {', '.join(summary['forward'])}; "
              f"probe read the kernel of {', '.join(summary['probe'])}"
              + (f"; whole rows because {summary['probe_row_reads']}" if "probe_row_reads" in summary else ""))
        forward, cost = flops(text, vision, B, S, T, B * side * side, len(mid), n_image)
        print(f"FLOPs: forward {forward / 1e9:.2f} G, probe mid {cost / 1e9:.3f} G "
              f"({100 * cost / forward:.2f}% of the forward)")
    del model


# ----------------------------------------------------------------------------- run

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(common.machine_line(device))

if args.suite in ("tiny", "all"):
    # (B, image grid side in patches, prompt text tokens, response tokens):
    # the default task (2x1 slots ~ a few image tokens, short answers) and a long case at models/tiny.py's max_pixels
    bench("tiny Qwen2.5-VL (models/tiny.py sizes)", *model_sizes("tiny"), torch.float32, torch.device("cpu"),
          [(8, 4, 40, 32), (4, 32, 40, 256)])

if args.suite in ("3b", "all"):
    # ~1k image tokens (64x64 patches = 896x896 px) and ~1k response tokens
    B, side, prompt_len, response_len = 4, 64, 64, 1024
    if device.type == "cuda" or args.shrink:
        if args.shrink:  # exercise the code path only: 2 layers (common.model_sizes), small inputs
            B, side, response_len = 2, 16, 64
        bench("Qwen2.5-VL-3B config (random weights)", *model_sizes("3b", shrink=args.shrink),
              torch.bfloat16, device, [(B, side, prompt_len, response_len)])
    # analytic estimate at the full 3B config and shapes (printed with or without a GPU)
    full_text, full_vision = model_sizes("3b")  # not shrunk: the estimate is for the real model
    side, T, L = 64, 1024, full_text["num_hidden_layers"]
    S, mid = 64 + side * side // 4 + 2 + T, len(default_layers(L))
    for B_est in (1, 4):
        forward, cost = flops(full_text, full_vision, B_est, S, T, B_est * side * side, mid, side * side // 4)
        _, cost_all = flops(full_text, full_vision, B_est, S, T, B_est * side * side, L, side * side // 4)
        # the probe's fp32 (c, V + 1) score blocks: written by the matmul, read+written by exp, read by the head
        # mean -> ~4 passes of 4 bytes over B*H*T*(V+1) entries per layer; this memory traffic, more than the
        # FLOPs, bounds its GPU time
        traffic = 4 * 4 * B_est * full_text["num_attention_heads"] * T * (side * side // 4 + 1) * mid
        print(f"\nQwen2.5-VL-3B estimate, B={B_est} S={S} T={T}: forward {forward / 1e12:.2f} TFLOP; "
              f"probe mid third ({mid} layers) {cost / 1e9:.0f} GFLOP = {100 * cost / forward:.2f}%, "
              f"all layers {cost_all / 1e9:.0f} GFLOP = {100 * cost_all / forward:.2f}%; "
              f"probe fp32 score traffic ~{traffic / 2**30:.1f} GiB (mid third)")
        # roofline guess for an H100 SXM (assumptions, not a measurement): HBM 3.35 TB/s, fp32 FMA 67 TFLOP/s,
        # the bf16 forward at 40% of 989 TFLOP/s; the probe pays its traffic and its fp32 FLOPs back to back
        probe_s, forward_s = traffic / 3.35e12 + cost / 67e12, forward / (0.4 * 989e12)
        print(f"  H100 roofline guess: forward {1e3 * forward_s:.0f} ms, probe {1e3 * probe_s:.1f} ms "
              f"= {100 * probe_s / forward_s:.1f}% of a no-grad forward, ~{100 * probe_s / (3 * forward_s):.1f}% of "
              f"forward + backward")
