"""Benchmark: the share of a Qwen2.5-VL-3B forward that the vision tower's windowed attention takes.

Qwen2.5-VL's vision tower attends within 112-px windows (64 patches) in 28 of its 32 blocks. Under transformers'
sdpa (or eager) attention it runs one attention call per window per block, plus a host read of the window
lengths per block (modeling_qwen2_5_vl.py, Qwen2_5_VLVisionAttention.forward; only a "flash" implementation gets
all windows in one varlen call). This script measures what that costs, for one image at train.py's --max_pixels
(512 x 28^2 = 401,408 px: a 616 x 616 image = 44 x 44 patches = 1,936 patches, 484 image tokens):

    tower     the vision tower, 3B config, random weights: --depth of its 32 blocks (default 8 = blocks 0-7, seven
              windowed and one full-attention, the tower's period), timed, scaled to 32 blocks
    windows   the attention calls of the windowed blocks, timed inside an attention function registered around
              transformers' own sdpa function (a CPU runs them synchronously), and counted
    decoder   --layers of the 36 decoder layers over the prompt (484 image + --text tokens), scaled to 36: with the
              tower, the prefill forward of one rollout

    share     windows / (tower + decoder), and windows / tower

On a GPU (--device cuda) the same clocks measure host time, not kernel time, unless every call synchronises; the
script then times whole forwards (synchronised) with the loop and, for the estimate, counts the calls. Without a
GPU it prints the host-overhead estimate: calls x 20-35 us each (dispatch, kernel choice and launch; 17-33 us
measured per call on this CPU for tiny tensors) against the tower's GPU work (2 x patches x parameters),
unmeasured.

Run (from the repository root):
    OMP_NUM_THREADS=1 python bench/vision.py                   # CPU, fp32, one image at train.py's max_pixels
    python bench/vision.py --side 980 --depth 8 --dtype bf16    # a larger image, bf16 matmuls
    python bench/vision.py --shrink --side 168 --depth 2 --layers 1 --fused   # a CPU smoke test (bench/gpu.py --shrink)
"""

import common  # first: it puts the repository root on sys.path (see its docstring)

import argparse
import time

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ops import vision_windows

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--side", type=int, default=616, help="image side in px (616: train.py's max_pixels, 484 tokens)")
parser.add_argument("--depth", type=int, default=8, help="vision blocks built and timed (of 32; scaled to 32)")
parser.add_argument("--layers", type=int, default=2, help="decoder layers built and timed (of 36; scaled to 36)")
parser.add_argument("--text", type=int, default=70, help="text tokens of the prompt beside the image tokens")
parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
parser.add_argument("--repeats", type=int, default=2, help="timed forwards (after one warm-up); medians reported")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--shrink", action="store_true", help="a smoke test of the code: a 16k vocabulary and a quarter of "
                    "the decoder's MLP (common.model_sizes), so the model builds in seconds; its figures mean nothing")
parser.add_argument("--fused", action="store_true", help="also time ops/vision_windows.py (one call per block) "
                    "against the loop, and compare their outputs")
args = parser.parse_args()

device = torch.device(args.device)
torch.set_num_threads(args.threads)
dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
text_sizes, vision_sizes = common.model_sizes("3b")[0] if not args.shrink else common.model_sizes("3b", True)[0], \
    common.model_sizes("3b")[1]
full_blocks = [i for i in vision_sizes["fullatt_block_indexes"] if i < args.depth]
clock = {"windows": 0.0, "windows_calls": 0, "full": 0.0, "full_calls": 0}
SDPA = ALL_ATTENTION_FUNCTIONS["sdpa"]


def timed_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, timed and counted per kind of block (windowed: many short calls)."""
    common.sync(device)
    t0 = time.perf_counter()
    out = SDPA(module, query, key, value, attention_mask, **kwargs)
    common.sync(device)
    kind = "windows" if query.shape[2] <= 64 else "full"  # a window holds 64 patches at most
    clock[kind] += time.perf_counter() - t0
    clock[kind + "_calls"] += 1
    return out


AttentionInterface.register("bench_timed_sdpa", timed_sdpa)


def median_seconds(fn):
    fn()  # warm-up
    times = []
    for _ in range(args.repeats):
        common.sync(device)
        t0 = time.perf_counter()
        fn()
        common.sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


print(common.machine_line(device))
vision_sizes.update(depth=args.depth, fullatt_block_indexes=full_blocks)
model = common.build_model(dict(text_sizes, num_hidden_layers=args.layers), vision_sizes, dtype, device).eval()
tower, lm = model.model.visual, model.model.language_model
patches_side = args.side // 14
grid = torch.tensor([[1, patches_side, patches_side]], device=device)
n_patches = patches_side * patches_side
pixels = torch.randn(n_patches, 3 * 2 * 14 * 14, dtype=dtype, device=device)
S = n_patches // 4 + args.text

with torch.no_grad():
    model.config.vision_config._attn_implementation_internal = "bench_timed_sdpa"
    t_tower = median_seconds(lambda: tower(pixels, grid_thw=grid))
    calls = {k: clock[k] / (args.repeats + 1) for k in clock}  # per forward (warm-up included in the sums)
    model.config.vision_config._attn_implementation_internal = "sdpa"
    t_plain = median_seconds(lambda: tower(pixels, grid_thw=grid))  # the same, untimed inside: the timer's cost
    embeds = torch.randn(1, S, text_sizes["hidden_size"], dtype=dtype, device=device)
    positions = torch.arange(S, device=device)[None, None].expand(3, 1, S)
    t_decoder = median_seconds(lambda: lm(inputs_embeds=embeds, position_ids=positions, use_cache=False))
    if args.fused:
        loop_out = tower(pixels, grid_thw=grid).pooler_output
        with vision_windows.fused(model):
            t_fused = median_seconds(lambda: tower(pixels, grid_thw=grid))
            fused_out = tower(pixels, grid_thw=grid).pooler_output

scale_tower = 32 / args.depth  # the period (7 windowed + 1 full) repeats 4 times in the real tower
windowed_blocks = args.depth - len(full_blocks)
tower_32 = t_plain * scale_tower
decoder_36 = t_decoder * 36 / args.layers
windows_32 = calls["windows"] * 28 / max(windowed_blocks, 1)
n_calls = int(round(calls["windows_calls"] * 28 / max(windowed_blocks, 1)))
print(f"image {args.side} x {args.side} px: {n_patches} patches, {n_patches // 4} image tokens, prompt {S} tokens; "
      f"{args.dtype}, {args.threads} thread(s), {args.repeats} timed forwards (medians)")
print("| part (scaled to the 3B model) | ms | share of tower + decoder | share of tower |")
print("|---|---|---|---|")
print(f"| vision tower, 32 blocks ({args.depth} timed) | {1e3 * tower_32:.0f} | "
      f"{100 * tower_32 / (tower_32 + decoder_36):.1f}% | 100% |")
print(f"| decoder prefill, 36 layers ({args.layers} timed) | {1e3 * decoder_36:.0f} | "
      f"{100 * decoder_36 / (tower_32 + decoder_36):.1f}% | |")
print(f"| windowed attention calls: {n_calls} per image ({calls['windows_calls'] / max(windowed_blocks, 1):.0f} per "
      f"block) | {1e3 * windows_32:.1f} | **{100 * windows_32 / (tower_32 + decoder_36):.2f}%** | "
      f"{100 * windows_32 / tower_32:.2f}% |")
print(f"| full-attention calls: {int(calls['full_calls']) * 4} per image | {1e3 * calls['full'] * scale_tower:.1f} | "
      f"{100 * calls['full'] * scale_tower / (tower_32 + decoder_36):.2f}% | {100 * calls['full'] * scale_tower / tower_32:.2f}% |")
print(f"(timer's own cost: the timed tower took {1e3 * t_tower * scale_tower:.0f} ms against {1e3 * tower_32:.0f} ms)")
if args.fused:
    same = torch.equal(loop_out, fused_out)
    print(f"fused windows (ops/vision_windows.py, one call per block): tower {1e3 * t_fused * scale_tower:.0f} ms against "
          f"{1e3 * tower_32:.0f} ms with the loop ({t_fused / t_plain:.2f}x); output "
          + ("bit for bit the loop's" if same else f"max |diff| {(loop_out - fused_out).abs().max().item():.3g}"))
# the GPU estimate (unmeasured): host time of the calls against the tower's GPU work
block_params = sum(p.numel() for p in tower.blocks.parameters())
vision_params = block_params * 32 / args.depth + sum(p.numel() for p in tower.parameters()) - block_params
flop = 2 * n_patches * vision_params
low, high = n_calls * 20e-6, n_calls * 35e-6
print(f"GPU estimate (unmeasured): {n_calls} windowed calls x 20-35 us of host time = {1e3 * low:.0f}-{1e3 * high:.0f} ms "
      f"per image forward, plus {windowed_blocks and 28} host syncs (one per windowed block: the window lengths are "
      f"read back); the tower's matmuls are {flop / 1e12:.2f} TFLOP = {1e3 * flop / 400e12:.1f} ms at 400 TFLOP/s")
