"""Benchmark: what AT-RL adds to a GRPO step, measured side by side on the same rollouts, in one run.

One RL update (train.py phases 4-6, single on-policy pass: ppo_epochs = mini_batches = 1) over B rollouts in
micro-batches, run in several arms on the SAME rollout batch, seed and weights:

    uniform   GRPO/DAPO: forward -> PPO-clip loss with W = 1 -> backward, then clip + AdamW step
    atrl      the same, plus what train.py adds for AT-RL (--overlap_weights 1, its default): the probe
              installed and armed; in the forward it hands each probed layer's q/k to its worker thread, which
              reads the attention rows and then runs connectivity.debias_sinks -> atrl.token_weights_with_stats
              (token_graph + Louvain + W) while the training thread finishes the forward; the loss waits for W
    atrl, inline         the same work done inside the forward on the training thread (--overlap_weights 0)
    vppo      GRPO with VPPO's weights: first two no-grad forwards per micro-batch (its image, and the image
              with half its patches blackened; timed as their own stage), then W from the per-token visual
              dependency (atrl's "vppo" arm)
    entropy   GRPO with W from the top 20% of each response's tokens by the forward's entropy (no extra pass)

    ratio     = median over rounds of  t(arm) / t(uniform)  in the same round (paired: noise hits both)
    CPU time  = the same ratio for process CPU seconds (all threads): the work the overlap hides, not removes
    extra     = t(atrl) - t(uniform), broken down by stage: on the training thread (forward, install/arm, waiting
                for W, loss + backward, optimizer, rest) and on the probe's worker (read, debias, graph, Louvain,
                weights)

Rounds are interleaved (the arm order rotates every round) and medians are reported, because the machine
this runs on is shared and noisy. The optimizer runs at lr = 0: AdamW does all its arithmetic, but the
weights never change, so every round sees the same attention, the same graphs and the same Louvain work.

Sections (--sections):
  step     the tiny RL step on rollouts sampled from the tiny model train.py uses (tiny.DEFAULT_DIR if built,
           else a random checkpoint) at train.py's defaults: 16 prompts x G 8 = 128 rollouts, micro-batches of
           64, 40 new tokens on the grid task (v2), probe on the middle third. The loss mask keeps truncated responses (train.py masks
           them out; a random model truncates most, which would leave AT-RL nothing to do). The probe is
           installed per step here (train.py: once per run), so its ~1 ms install + restore counts against
           AT-RL. With --config 3b: 8 synthetic rollouts at Qwen2.5-VL-3B shapes (1024 image tokens,
           responses of 512..1024 tokens), micro-batches of 2.
  memory   peak memory of one step per arm. CPU: a fresh subprocess per arm; the process's peak resident
           memory (VmHWM) and torch's own allocation peak during a steady step (profiler memory events);
           GPU: torch.cuda.max_memory_allocated per step.
  scaling  synthetic single micro-batches on a random model: probe + graph + Louvain + weights against the
           forward + backward, as the response grows (128 -> 4096 tokens) and as the image grows (64 -> 4096
           image tokens). The tiny model's vision tower runs windowed attention only here (as 28 of the 32
           blocks of the real one do), so a 4096-token image stays affordable on a CPU. The work is timed
           inline (its cost), and again overlapped as train.py runs it (what is left on the wall clock).

Where this departs from train.py: the step's loss/log-prob code is re-stated here (train.py is a script and
cannot be imported); the 3B model is built directly in bf16 (train.py: fp32 weights + bf16 autocast), so
AdamW's state is bf16 too; `--config 3b` uses synthetic rollouts (no tokenizer needed).

Trap (pin_malloc, CPU): glibc's dynamic mmap threshold makes page faults depend on the thread layout; the
bench pins it so arms differ only by their work (--malloc default shows the unpinned numbers).

Trap (NOTE below, at "run"): numba's first parallel call (clustering.louvain_packed) starts an OpenMP thread
team and thereby raises torch's intra-op threads from OMP_NUM_THREADS to numba's count; the bench pins torch
back. Compare numba's threading layers by running twice, e.g. NUMBA_THREADING_LAYER=workqueue.

Run (from the repository root; CPU, tiny: 1.5 minutes on a quiet 2-core machine, ~4 on a busy one):
    OMP_NUM_THREADS=1 nice -n 10 python bench/step.py
    python bench/step.py --sections step --repeats 5          # one section, fewer rounds
    python bench/step.py --device cuda --config 3b            # GPU: Qwen2.5-VL-3B config, random bf16 weights
    python bench/step.py --config 3b --shrink                 # smoke-test the 3B code path on CPU (minutes)
"""

import common  # first: it puts the repository root on sys.path (see its docstring)

import argparse
import contextlib
import functools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import torch

import atrl
import clustering
import connectivity
import engine
import rollout
from models import family
from ops import sdpa
from tasks import visualmath

# ------------------------------------------------------------------------------------------- config

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--config", default="tiny", choices=["tiny", "3b"], help="model sizes")
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--sections", default="step,memory,scaling", help="comma list of step, memory, scaling")
parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds of the step section (median)")
parser.add_argument("--scaling_repeats", type=int, default=3, help="interleaved rounds per scaling point")
parser.add_argument("--model", default="", help="tiny checkpoint dir; '' = tiny.DEFAULT_DIR if built, "
                                                "else a random checkpoint (tiny.make_random_checkpoint)")
parser.add_argument("--prompts", type=int, default=16, help="prompts per step (train.py --prompts_per_step)")
parser.add_argument("--group_size", type=int, default=8, help="G responses per prompt")
parser.add_argument("--micro", type=int, default=64, help="rollouts per forward/backward (train.py default)")
parser.add_argument("--max_new_tokens", type=int, default=40, help="response budget of the sampled rollouts (train.py default)")
parser.add_argument("--dataset", default="visualmath", help="the synthetic task of the step section (train.py default)")
parser.add_argument("--probe_layers", default="middle", help="train.py's --probe_layers (early|middle|late|all|4,5,6)")
parser.add_argument("--grad_checkpointing", type=int, default=-1, help="-1: on for 3b, off for tiny")
parser.add_argument("--shrink", action="store_true", help="3b: 2 layers and small inputs (a CPU smoke test)")
parser.add_argument("--recipe", action="store_true",
                    help="3b: the README's 3B recipe instead (fp32 weights under bf16 autocast, gradient checkpointing, "
                         "micro-batches of 4, 484 image tokens; uniform and atrl) and the GPUs its peak fits")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--malloc", default="pinned", choices=["pinned", "default"],
                    help="CPU: pin glibc malloc's mmap/trim thresholds (see pin_malloc) or leave them dynamic")
parser.add_argument("--memory_child", default="", help=argparse.SUPPRESS)  # internal: arm name
parser.add_argument("--state", default="", help=argparse.SUPPRESS)  # internal: saved model dir + rollouts
args = parser.parse_args()



MALLOC = common.pin_malloc() if args.malloc == "pinned" else "dynamic (glibc default)"
device = torch.device(args.device)
cuda = device.type == "cuda"
if cuda and not torch.cuda.is_available():
    print("bench/step.py: --device cuda but CUDA is not available here -- skipped (nothing measured)")
    sys.exit(0)
if args.config == "3b" and not cuda and not args.shrink:
    print("bench/step.py: --config 3b needs --device cuda (a 3B step on a CPU takes hours) -- skipped; "
          "use --shrink to smoke-test the code path on CPU")
    sys.exit(0)
grad_ckpt = (args.config == "3b") if args.grad_checkpointing < 0 else bool(args.grad_checkpointing)
# 3B: built in bf16 (a timing benchmark), or as train.py --bf16 1 runs it with --recipe: fp32 weights, bf16 autocast
dtype = torch.bfloat16 if args.config == "3b" and cuda and not args.recipe else torch.float32
AUTOCAST = torch.autocast(device.type, dtype=torch.bfloat16) if args.recipe else None
KERNELS = sdpa.Kernels(sdpa.setup(device))  # train.py's choice (cuDNN off below 9.26); each arm's first step recorded
PIXELS = None  # an image processor for rollout.blacken_patches (its mean/std and patch sizes); set below
K_NN, ANCHOR_FRAC, GAIN = 0, 0.15, 2.0  # train.py defaults (--knn: 0 = per response, --anchor_frac, --gain)
TORCH_THREADS, NUMBA_THREADS = torch.get_num_threads(), numba.get_num_threads()


# ------------------------------------------------------------------------------------------- timing


STAGES = common.Stages(device)  # the step being timed; the hooks below write into it


def _timed(name, fn):
    def wrapper(*a, **kw):
        with STAGES(name):
            return fn(*a, **kw)
    return wrapper


# The two halves of atrl.cluster_tokens, timed where atrl looks them up (module attributes).
atrl.token_graph = _timed("graph", atrl.token_graph)
clustering.louvain_batch = _timed("louvain", clustering.louvain_batch)
if not cuda:  # the probe's reading of a layer (on GPU it is queued, not run, so time the forward)
    connectivity.Probe._read = _timed("probe read", connectivity.Probe._read)

# ------------------------------------------------------------------------------------------- models


def build_model():
    """The random synthetic-batch model: models/tiny.py's sizes or Qwen2.5-VL-3B's (--shrink: 2 layers); the tiny
    vision tower runs windowed attention only (common.model_sizes), so a 4096-token image stays affordable."""
    text, vision = common.model_sizes(args.config, args.shrink, windowed_vision=args.config == "tiny")
    return common.build_model(text, vision, dtype, device, seed=args.seed)


def prepare_for_training(model):
    """As train.py: train mode, vision tower frozen, optional gradient checkpointing; AdamW at lr 0."""
    model.train()
    model.model.visual.requires_grad_(False)
    if grad_ckpt:  # transformers >= 5.23 names it activation_..., older 5.x gradient_... (as train.py)
        family.checkpoint_activations(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return params, torch.optim.AdamW(params, lr=0.0)


def synthetic_batch(model, B, n_image, T, prompt_text=24, vary=False, seed=0):
    """B rollouts in rollout.py's layout: [text, <vision_start>, n_image x <image_pad>, <vision_end>, text |
    response (T tokens, right-padded)], one prompt length for all. vary=True draws response lengths in
    [T/2, T] (else all T: the worst case)."""
    side = int(round(n_image ** 0.5))
    assert side * side == n_image, f"n_image={n_image} must be a square (the image grid is side x side tokens)"
    vc = model.config.vision_config
    g = torch.Generator().manual_seed(seed)
    P = prompt_text + n_image + 2
    input_ids = torch.randint(100, 400, (B, P + T), generator=g)                   # (B, S) text ids
    input_ids[:, 4] = common.V_START
    input_ids[:, 5:5 + n_image] = common.IMAGE
    input_ids[:, 5 + n_image] = common.V_END
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g) if vary else torch.full((B,), T)
    response_mask = torch.arange(T)[None, :] < lengths[:, None]                   # (B, T)
    attention_mask = torch.cat([torch.ones(B, P, dtype=torch.long), response_mask.long()], 1)  # (B, S)
    grid = torch.tensor([[1, side * vc.spatial_merge_size, side * vc.spatial_merge_size]] * B)  # (B, 3) patches
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask,
            "mm_token_type_ids": (input_ids == common.IMAGE).int(),  # 3-D mRoPE positions need it (transformers 5.x)
            "full_response_mask": torch.cat([torch.zeros(B, P, dtype=torch.bool), response_mask], 1),
            "response_mask": response_mask, "prompt_len": P, "image_grid_thw": grid,
            "pixel_values": torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=g).to(dtype),
            "rewards": torch.randint(0, 2, (B,), generator=g).float(), "keys": torch.arange(B)}


def sampled_rollouts(model_dir):
    """(model, batch): the tiny checkpoint and one rollout batch sampled from it, scored (train.py phase 1-2)."""
    model = family.load_model(model_dir).to(device)  # its family's class, every weight matched
    tokenizer, image_processor = family.load_processor(model_dir)
    min_pixels, max_pixels = family.pixel_bounds(image_processor, 0, 0, 512, "bench/step.py")  # train.py's defaults
    rows = visualmath.make(args.dataset, args.prompts, seed=args.seed)
    rows = [rows[i] for i in range(args.prompts)]
    keys = [(args.seed + 1) * 1_000_000_007 + j for j in range(args.prompts)]  # as train.py's prompt keys
    model.eval()
    t0 = time.perf_counter()
    batch = rollout.score(rollout.sample_groups(model, tokenizer, image_processor, rows, args.group_size, keys,
                                                max_new_tokens=args.max_new_tokens, min_pixels=min_pixels,
                                                max_pixels=max_pixels))
    batch["rollout_seconds"] = time.perf_counter() - t0
    return model, batch


# ------------------------------------------------------------------------------------------- the step


def weights_from_probe(captured, mask, seed):
    """W (b, T) from what the probe captured -- train.py's weights_from_probe (the kNN graph built where the
    patterns are, Louvain on the CPU). Run by the probe itself (arm's `then`): on its worker thread when
    overlapped, inside the forward when inline."""
    with STAGES("weights"):
        with STAGES("debias"):
            pad = mask.shape[1] - captured["patterns"].shape[1]
            patterns = torch.nn.functional.pad(captured["patterns"], (0, 0, 0, pad))      # (b, T, V)
            sink = torch.nn.functional.pad(captured["sink"], (0, pad))                    # (b, T)
            patterns, rho = connectivity.debias_sinks(patterns, sink, captured["image_valid"])
        W, _ = atrl.token_weights_with_stats(patterns, rho, mask.bool(), mode="atrl", anchor_frac=ANCHOR_FRAC,
                                             gain=GAIN, k=K_NN, seed=seed)
        return W.to(mask.device)


def probe_layers(model):
    return list(connectivity.layer_band(args.probe_layers, model.config.get_text_config().num_hidden_layers))


def rl_step(model, params, optimizer, batch, adv, loss_mask, variant, micro, seed=0):
    """One update over the batch (train.py phases 4-6); variant "uniform" is GRPO. Times go to STAGES."""
    B, P = len(adv), batch["prompt_len"]
    n_tokens = max(loss_mask.sum().item(), 1.0)
    if variant == "vppo":  # train.py's old_policy_pass: no-grad forwards on each image and on it half blackened
        with STAGES("vppo passes"), torch.no_grad():
            logp0, blackened = torch.zeros_like(loss_mask), torch.zeros_like(loss_mask)
            for i in range(0, B, micro):
                mb = rollout.slice_batch(batch, i, i + micro)
                logp0[i:i + micro] = rollout.token_logprobs(model, mb, P, AUTOCAST)[0]
                blackened[i:i + micro] = rollout.token_logprobs(model, rollout.blacken_patches(mb, PIXELS), P,
                                                                AUTOCAST)[0]
            W_all = atrl.token_weights_with_stats(None, None, loss_mask.bool(), "vppo",
                                                  dependency=atrl.visual_dependency(logp0, blackened))[0]
    with contextlib.ExitStack() as stack:
        probe = None
        if variant.startswith("atrl"):  # train.py installs it once per run; here per step (its cost is counted)
            with STAGES("probe install"):
                probe = stack.enter_context(connectivity.probe(model, probe_layers(model),
                                                               background="inline" not in variant))
        for i in range(0, B, micro):
            mb, mask = rollout.slice_batch(batch, i, i + micro), loss_mask[i:i + micro]
            if probe is not None:
                with STAGES("probe arm"):
                    probe.arm(connectivity.query_positions(mb["full_response_mask"], "predict"),
                              mb["input_ids"] == model.config.image_token_id, mb["attention_mask"],
                              then=functools.partial(weights_from_probe, mask=mask, seed=seed))
            with STAGES("forward"), KERNELS.once(f"{variant}: forward"):
                logp, entropy = rollout.token_logprobs(model, mb, P, AUTOCAST)
            if variant == "vppo":
                W = W_all[i:i + micro]
            elif variant == "entropy":  # the top 20% by this forward's entropy
                W = atrl.token_weights_with_stats(None, None, mask.bool(), "entropy", entropy=entropy)[0]
            elif probe is None:
                W = mask.clone()
            else:
                with STAGES("weights wait"):
                    W = probe.outcome()
            with STAGES("loss+backward"):
                adv_tok = atrl.token_advantages(adv[i:i + micro], W)                  # (b, T) = W * A
                pg, _ = atrl.ppo_clip_loss(logp, logp.detach(), adv_tok, 0.2, 0.28)     # on-policy: r = 1
                loss = atrl.aggregate_loss(pg, mask, "token_mean", n_tokens, 1, 1)
                with KERNELS.once(f"{variant}: backward"):
                    loss.backward()
                loss.item(), ((entropy * mask).sum() / n_tokens).item()               # train.py logs these
        with STAGES("probe install"):
            stack.close()  # restore the model's attention implementation (counted with the install)
    with STAGES("optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if torch.isfinite(grad_norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def prepare_batch(batch, group_size):
    """(batch on device, adv (B,), loss mask (B, T)) -- train.py phase 3, truncated responses kept."""
    batch = rollout.to_device(batch, device)
    adv = atrl.group_advantages(batch["rewards"], group_size)                          # (B,)
    return batch, adv, batch["response_mask"].float()


# ------------------------------------------------------------------------------------------- report helpers


def med(xs):
    return statistics.median(xs) if xs else 0.0


def ms(x):
    return f"{1e3 * x:.1f}"


# ------------------------------------------------------------------------------------------- memory child
# A fresh process per arm (CPU): one step to allocate AdamW's state, then the process's resident high-water
# mark (VmHWM) over a second, steady step, and torch's own allocation peak over a third. tracemalloc cannot
# see torch's allocator; the RSS *increment* of a step is malloc noise (it swung 0-47 MiB in either arm).

if args.memory_child:
    state = torch.load(args.state, weights_only=False)
    model = family.load_model(state["model_dir"])
    params, optimizer = prepare_for_training(model)
    batch, adv, loss_mask = prepare_batch(state["batch"], args.group_size)
    # AT-RL's first Louvain call loads numba's compiled code and thread team (GRPO never does): measured apart,
    # before the steps, so the steady step's peak below is its own
    before = common.status_kib("VmRSS")
    if args.memory_child != "uniform":
        atrl.token_weights(torch.rand(2, 16, 4), torch.rand(2, 16), torch.ones(2, 16, dtype=torch.bool))
    numba_kib = common.status_kib("VmRSS") - before
    torch.set_num_threads(TORCH_THREADS)  # see the NOTE at "run" below
    rl_step(model, params, optimizer, batch, adv, loss_mask, args.memory_child, args.micro)  # + AdamW state
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so the next step's peak is its own
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = common.status_kib("VmRSS")
    rl_step(model, params, optimizer, batch, adv, loss_mask, args.memory_child, args.micro)
    hwm = common.status_kib("VmHWM")
    # torch's own allocations during a third step, replayed from the profiler's memory events (deterministic,
    # unlike RSS, but blind to numpy/numba arrays -- the CSR graphs, a few KiB here)
    torch_peak = common.peak_bytes(lambda: rl_step(model, params, optimizer, batch, adv, loss_mask,
                                                   args.memory_child, args.micro), device)
    print(f"MEMORY {start} {hwm} {numba_kib} {torch_peak // 1024}")
    sys.exit(0)

# ------------------------------------------------------------------------------------------- run

sections = args.sections.split(",")
# NOTE: numba's first parallel call starts an OpenMP thread team of NUMBA_NUM_THREADS (default: all cores)
# and that silently raises torch's intra-op threads too (same OpenMP runtime): from OMP_NUM_THREADS=1 to 2
# here. Every arm would then run torch on more threads than asked -- on a busy machine several times
# slower. So: load numba now, then pin torch back.
atrl.token_weights(torch.rand(2, 16, 4), torch.rand(2, 16), torch.ones(2, 16, dtype=torch.bool))
torch.set_num_threads(TORCH_THREADS)
print(f"bench/step.py: config {args.config}{' (shrunk)' if args.shrink else ''} on {device} ({dtype}), "
      f"gradient checkpointing {int(grad_ckpt)}, probe layers {args.probe_layers}, "
      f"numba threading layer {numba.threading_layer()}, malloc thresholds {MALLOC}")
print(common.machine_line(device))

VARIANTS = ["uniform", "atrl"] if args.recipe else ["uniform", "atrl", "atrl, inline", "vppo", "entropy"]
RECIPE_ROWS, RECIPE_NEW_TOKENS = 128, 1024  # the README recipe's rollouts per GPU and --max_new_tokens
step_state = None

if "step" in sections or "memory" in sections:
    # ---- the rollout batch every arm trains on
    if args.config == "tiny":
        from models import tiny
        model_dir = args.model or (tiny.DEFAULT_DIR if os.path.exists(os.path.join(tiny.DEFAULT_DIR, "config.json"))
                                   else tiny.make_random_checkpoint(tempfile.mkdtemp(prefix="bench_step_")))
        model, raw_batch = sampled_rollouts(model_dir)
        micro, group_size = args.micro, args.group_size
        what = (f"{args.prompts} prompts x G {args.group_size} rollouts sampled from {model_dir} "
                f"in {raw_batch['rollout_seconds']:.1f} s")
    else:
        model_dir = None
        t0 = time.perf_counter()
        model = build_model()
        common.sync(device)
        print(f"  built the {args.config} model in {time.perf_counter() - t0:.1f} s", flush=True)
        B, n_image, T = (2, 16, 32) if args.shrink else (8, 484 if args.recipe else 1024, 1024)
        raw_batch = synthetic_batch(model, B, n_image, T, prompt_text=64, vary=True, seed=args.seed)
        # 3B: 2 prompts x G 4, 2 rollouts per forward (the recipe: --micro_batch_size 4)
        micro, group_size = (1, 2) if args.shrink else (4 if args.recipe else 2, 4)
        raw_batch["rollout_seconds"] = 0.0
        what = f"{B} synthetic rollouts, {n_image} image tokens, responses of {T // 2}..{T} tokens"
    params, optimizer = prepare_for_training(model)
    batch, adv, loss_mask = prepare_batch(raw_batch, group_size)
    S, T = batch["input_ids"].shape[1], loss_mask.shape[1]
    decoder = None
    if args.recipe:  # train.py --bf16 1 keeps the engine's bf16 weight copy and its KV cache through the update
        decoder = engine.DecodeEngine(model, torch.bfloat16, max_rows=RECIPE_ROWS)
        rows = RECIPE_ROWS if cuda else 4  # the recipe's 16 prompts x G 8 per rank; a CPU smoke test: 4
        decoder.reserve(rows, S - T + RECIPE_NEW_TOKENS)  # its prompt + --max_new_tokens 1024
        held = decoder.memory()
        print(f"engine (train.py --bf16 1): bf16 weight copy {held['weight_copy_bytes'] / 2**30:.2f} GiB + KV cache "
              f"{held['kv_cache_bytes'] / 2**30:.2f} GiB ({rows} rows x {decoder.slot.capacity} columns), held through "
              "the update: in the peaks below (its CUDA graphs' pool is not: ~0.5-1 GiB, an estimate)", flush=True)
    from models import tiny
    PIXELS = tiny.make_image_processor()  # Qwen's CLIP mean/std, patch 14, temporal 2: the 3B's too
    n_image = int((batch["input_ids"][0] == model.config.image_token_id).sum())
    step_state = dict(model_dir=model_dir, batch=raw_batch)

if "step" in sections:
    print(f"\n## step: {what}; B={len(adv)} S={S} T={T} (mean response {loss_mask.sum(1).mean():.1f} tokens), "
          f"V={n_image} image tokens, micro-batch {micro}, {args.repeats} interleaved rounds")
    for v in VARIANTS if not args.shrink else []:  # warm-up: allocator, AdamW state, numba cache, lazy init
        t0 = time.perf_counter()  # (--shrink is a smoke test of the code path: its times mean nothing)
        rl_step(model, params, optimizer, batch, adv, loss_mask, v, micro, seed=args.seed)
        common.sync(device)
        print(f"  warm-up {v}: {time.perf_counter() - t0:.1f} s", flush=True)
    totals = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}
    faults = {v: [] for v in VARIANTS}
    stages = {v: [] for v in VARIANTS}
    peaks = {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:  # rotate the order every round
            STAGES = common.Stages(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            common.sync(device)
            t0, c0, f0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            rl_step(model, params, optimizer, batch, adv, loss_mask, v, micro, seed=args.seed)
            common.sync(device)
            totals[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)  # CPU seconds of all threads: what the overlap does not hide
            faults[v].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)  # see pin_malloc
            stages[v].append(STAGES.seconds)
            if cuda:
                peaks[v].append(torch.cuda.max_memory_allocated())
        print(f"  round {r + 1}/{args.repeats}: " + ", ".join(  # each figure as soon as it is measured
            f"{v} {ms(totals[v][-1])} ms" + ("" if v == "uniform" else f" ({totals[v][-1] / totals['uniform'][-1]:.3f}x)")
            for v in VARIANTS), flush=True)
    base = totals["uniform"]
    print("| arm | median step ms | ratio vs uniform (paired median) [min, max] | rollout + step ratio "
          "| CPU-time ratio | page faults |" + (" peak GiB | peak ratio |" if cuda else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if cuda else ""))
    roll = raw_batch["rollout_seconds"]
    for v in VARIANTS:
        ratios = [t / b for t, b in zip(totals[v], base)]
        full = (roll + med(totals[v])) / (roll + med(base)) if roll else float("nan")
        cpu_ratio = med([t / b for t, b in zip(cpu[v], cpu["uniform"])])
        line = (f"| {v} | {ms(med(totals[v]))} | {med(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] | "
                f"{full:.3f} | {cpu_ratio:.3f} | {med(faults[v]):.0f} |")
        if cuda:
            line += f" {max(peaks[v]) / 2**30:.2f} | {max(peaks[v]) / max(peaks['uniform']):.3f} |"
        print(line)
    print(f"sdpa kernels ({KERNELS.setup['line']}): " + "; ".join(f"{phase} {', '.join(names)}" for phase, names in
                                                                   KERNELS.summary().items() if phase != "cudnn_sdpa"))
    if args.recipe and cuda:  # which GPUs the recipe's training step fits, with ~1 GiB for the CUDA context
        reserved = torch.cuda.max_memory_reserved() / 2**30
        # GiB torch sees on each card class (total_memory; approximate: ECC and the driver keep some)
        cards = {"24 GB": 23.5, "48 GB": 44.4, "80 GB": 79.1, "141 GB (H200)": 139.8}
        fits = ", ".join(f"{name}: {'yes' if reserved + 1 <= gib else 'no'}" for name, gib in cards.items())
        print(f"recipe peak: {max(max(peaks[v]) for v in VARIANTS) / 2**30:.1f} GiB allocated, {reserved:.1f} GiB "
              f"reserved by torch; fits {fits} (the training step with the engine's copy and KV cache held)")
    if roll:
        print(f"(rollout + step: adds the {roll:.1f} s it took to sample this batch once, the same for every arm)")
    print("(atrl = train.py: the probe reads its layers and computes W on its worker thread while the forward "
          "goes on; inline = --overlap_weights 0. CPU time counts every thread, so it shows the work the overlap "
          "hides)")

    # ---- where the extra time goes: per-stage medians and paired (same-round) differences from uniform
    top = ["vppo passes", "forward", "probe install", "probe arm", "weights wait", "loss+backward", "optimizer"]
    for v in VARIANTS:  # derived stages, per round: W's untimed remainder and the step's untimed remainder
        for t, st in zip(totals[v], stages[v]):
            st["weights: rest"] = st.get("weights", 0.0) - sum(st.get(k, 0.0) for k in ("debias", "graph", "louvain"))
            st["rest"] = t - sum(st.get(k, 0.0) for k in top)
            st["total"] = t
    ref = med(base)
    print(f"\nbreakdown: median ms per step, (paired median difference from uniform); uniform step = {ms(ref)} ms")
    print("| stage | uniform | " + " | ".join(VARIANTS[1:]) + " |")
    print("|---|---|" + "---|" * (len(VARIANTS) - 1))
    rows = [("vppo: no-grad forwards on the image and the blackened image", "vppo passes"),
            ("forward (inline: with the probe's read and W in it)", "forward"), ("probe install + restore", "probe install"),
            ("probe arm", "probe arm"), ("waiting for W after the forward", "weights wait"),
            ("loss + backward", "loss+backward"), ("optimizer", "optimizer"), ("rest (slicing, Python)", "rest"),
            ("**total**", "total"),
            ("*probe's work (worker thread, or inline in the forward):*", None),
            ("  probe read (fp32 rows)", "probe read"), ("  debias_sinks", "debias"), ("  graph (kNN CSR)", "graph"),
            ("  Louvain", "louvain"), ("  weights: anchors, shares, W, stats", "weights: rest")]
    for label, name in rows:
        if name is None:  # a sub-heading row
            print(f"| {label} |" + " |" * len(VARIANTS))
            continue
        if name == "probe read" and cuda:  # on GPU the read is queued, not run: see the forward
            continue
        cells = [ms(med([st.get(name, 0.0) for st in stages["uniform"]]))]
        for v in VARIANTS[1:]:
            value = med([st.get(name, 0.0) for st in stages[v]])
            delta = med([st.get(name, 0.0) - b.get(name, 0.0) for st, b in zip(stages[v], stages["uniform"])])
            cells.append(f"{ms(value)} ({1e3 * delta:+.1f}" + (f" = {100 * delta / ref:+.1f}%)" if name == "total" else ")"))
        print(f"| {label} | " + " | ".join(cells) + " |")

if "memory" in sections:
    print("\n## memory: peak of one step per arm")
    if cuda:
        print("see the step table (torch.cuda.max_memory_allocated per step, max over rounds)")
    elif args.config != "tiny":
        print("skipped: the CPU memory section measures the tiny model only")
    elif step_state is not None:
        path = os.path.join(tempfile.mkdtemp(prefix="bench_step_"), "state.pt")
        torch.save(step_state, path)
        arms = ["uniform", "atrl"]  # the variants allocate what atrl does
        results = {v: [] for v in arms}
        for r in range(2):  # two fresh processes per arm, interleaved
            for v in (arms if r % 2 == 0 else arms[::-1]):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory_child", v, "--state", path,
                                      "--micro", str(micro), "--group_size", str(args.group_size),
                                      "--malloc", args.malloc],
                                     capture_output=True, text=True, env=dict(os.environ))
                line = [x for x in out.stdout.splitlines() if x.startswith("MEMORY ")]
                if not line:
                    raise RuntimeError(f"memory child {v} failed:\n{out.stderr[-3000:]}")
                results[v].append([int(x) for x in line[0].split()[1:]])
        print("| arm | torch allocations: peak during a steady step, MiB | ratio | process peak RSS MiB | ratio |")
        print("|---|---|---|---|---|")
        col = lambda v, i: [m[i] / 1024 for m in results[v]]
        for v in arms:
            print(f"| {v} | {med(col(v, 3)):.2f} | {med(col(v, 3)) / med(col('uniform', 3)):.3f} | "
                  f"{med(col(v, 1)):.1f} | {med(col(v, 1)) / med(col('uniform', 1)):.3f} |")
        print(f"(peak RSS of atrl includes {med([m[2] for m in results['atrl']]) / 1024:.1f} MiB that numba's first "
              f"Louvain call adds once -- compiled code and its thread team; GRPO never calls numba)")

if step_state is not None:  # free the step's model and AdamW state before the scaling model is built (3B: GiBs)
    del model, params, optimizer, batch, adv, loss_mask, raw_batch, step_state
    if cuda:
        torch.cuda.empty_cache()

if "scaling" in sections:
    smodel = build_model()
    sparams, _ = prepare_for_training(smodel)
    if args.shrink:
        points = [(64, 128)]
    else:
        points = [(256, T) for T in (128, 512, 1024, 2048, 4096)] + [(V, 512) for V in (64, 1024, 4096)]
    # arms: plain = forward + backward; probe = the same with the probe armed, then the W pipeline inline (its
    # cost); overlap = as train.py runs it (read + W on the probe's worker during the forward; what is left
    # exposed is the wall time above plain); small chunk (CPU only) = the probe's score blocks cut to 2^19
    # floats (2 MiB, one L2)
    arms = ["plain", "probe", "overlap"] + ([] if cuda else ["small chunk"])
    print(f"\n## scaling: one micro-batch of 1 synthetic rollout (full-length response), {args.scaling_repeats} "
          f"interleaved rounds per point; extra = probe + debias + graph + Louvain + weights (inline); exposed = "
          f"wall time above fwd+bwd when overlapped as in train.py")
    print("| image tokens V | response T | S | fwd+bwd ms | probe ms | graph ms | Louvain ms | debias+weights ms "
          "| extra ms | extra / fwd+bwd | exposed / fwd+bwd |" + ("" if cuda else " probe, chunk 2^19 ms |"))
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("" if cuda else "---|"))
    for n_image, T in points:
        sb = rollout.to_device(synthetic_batch(smodel, 1, n_image, T, seed=args.seed), device)
        smask = sb["response_mask"].float()
        P = sb["prompt_len"]
        rec = {arm: [] for arm in arms}
        for r in range(args.scaling_repeats + 1):  # round 0 is a warm-up
            for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
                STAGES = common.Stages(device)
                common.sync(device)
                t0 = time.perf_counter()
                with contextlib.ExitStack() as stack:
                    p = None
                    if arm != "plain":
                        chunk = 2**19 if arm == "small chunk" else None  # None: connectivity.probe's default
                        p = stack.enter_context(connectivity.probe(smodel, probe_layers(smodel), chunk,
                                                                   background=arm == "overlap"))
                        p.arm(connectivity.query_positions(sb["full_response_mask"]), sb["input_ids"] == common.IMAGE,
                              sb["attention_mask"], then=functools.partial(
                                  weights_from_probe, mask=smask, seed=args.seed)
                              if arm == "overlap" else None)
                    with STAGES("forward"):
                        logp, _ = rollout.token_logprobs(smodel, sb, P)
                    if arm == "probe":
                        weights_from_probe(p.result(), smask, args.seed)  # inline: its cost, not hidden
                    if arm == "overlap":
                        p.outcome()
                    if arm != "small chunk":
                        with STAGES("backward"):
                            ((logp * smask).sum() / smask.sum()).backward()
                common.sync(device)
                STAGES.seconds["wall"] = time.perf_counter() - t0
                del logp
                for q in sparams:
                    q.grad = None
                if r > 0:
                    rec[arm].append(STAGES.seconds)
        fb = med([s["forward"] + s["backward"] for s in rec["plain"]])
        delta = lambda arm: med([a["forward"] - b["forward"] for a, b in zip(rec[arm], rec["plain"])])
        get = lambda name: med([s.get(name, 0.0) for s in rec["probe"]])
        other = med([s["weights"] - s.get("graph", 0) - s.get("louvain", 0) for s in rec["probe"]])
        extra = max(delta("probe"), 0.0) + get("weights")
        exposed = med([a["wall"] - b["wall"] for a, b in zip(rec["overlap"], rec["plain"])])
        print(f"| {n_image} | {T} | {sb['input_ids'].shape[1]} | {ms(fb)} | {ms(delta('probe'))} | {ms(get('graph'))} | "
              f"{ms(get('louvain'))} | {ms(other)} | {ms(extra)} | {100 * extra / fb:.1f}% | {100 * exposed / fb:.1f}% |"
              + ("" if cuda else f" {ms(delta('small chunk'))} |"))
        del sb

print("\n" + common.machine_line(device))
