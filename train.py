"""train.py -- GRPO/DAPO with Anchor-Token credit assignment (AT-RL) for Qwen2.5-VL / Qwen3-VL, in one flat loop.

What one step does, for P prompts and G sampled responses each (B = P*G rollouts, T response tokens):

    R[i]        = reward of rollout i                           (grading.compute_reward: 0.9*acc + 0.1*format)
    A[i]        = (R[i] - mean_G R) / (std_G R + eps)           (atrl.group_advantages; GRPO, Shao et al. 2024)
    W[i, t]     = W(C_k(t))                                     (atrl.token_weights; AT-RL Eq. for A_AT)
    A_AT[i, t]  = W[i, t] * A[i]                                (the paper's per-token advantage)
    r[i, t]     = pi(y_t | ...) / pi_old(y_t | ...)
    L           = agg_t max(-A_AT r, -A_AT clip(r, 1-eps_low, 1+eps_high))   (PPO-clip, DAPO clip-higher)
                  + beta * KL(pi || pi_ref)                      (optional, k1/k2/k3 estimators)

W comes from the text->image attention of the *training forward itself* (connectivity.probe): no extra
forward, no output_attentions. The probe reads the attention rows and computes W on a worker thread while the
forward is still running (--overlap_weights 1), so the loss rarely waits for it. With `--weighting uniform`
W = 1 and this is plain GRPO/DAPO.

Where we depart from / guess beyond the paper (each one is a flag; README "where we depart"):
  1. Anchors, graph, Louvain and W(.) follow our reading in DESIGN.md §2 (the paper does not publish them).
  2. Loss aggregation defaults to DAPO's token_mean; GRPO's seq_mean_token_mean and Dr.GRPO's
     seq_mean_token_sum_norm are one flag away. All three are exact under gradient accumulation and DDP
     because denominators are global counts, all-reduced before the backward.
  3. No reference model by default (kl_coef = 0, as DAPO/Dr.GRPO); it is loaded only when kl_coef > 0.
  4. Dynamic sampling tops a short batch up with zero-advantage groups after `max_refills` so every rank
     runs the same number of micro-batches (DDP would hang otherwise).

References: DAPO (Yu et al. 2025, Eq. 8-10: clip-higher, token-level loss, dynamic sampling);
Dr.GRPO (Liu et al. 2025); PPO dual-clip (Ye et al. 2020); KL estimators k1/k2/k3 (Schulman 2020 blog);
loop shape after nanochat scripts/chat_rl.py and CleanRL ppo.py.

Run it:
    python train.py                                     # embedded tiny model + VisualMath, CPU, minutes
    python train.py --model Qwen/Qwen2.5-VL-3B-Instruct --dataset hiyouga/geometry3k --bf16 1   # train split; test evaluates (Qwen3-VL: docs/families.md)
    torchrun --nproc_per_node 8 train.py --model Qwen/Qwen2.5-VL-3B-Instruct ...
    python train.py --resume 1                          # continue exactly where out_dir's newest checkpoint stopped
    python train.py --overwrite 1 --report_to tensorboard   # replace out_dir's run; watch: tensorboard --logdir runs

The run directory (infra/runs.py, docs/runs.md): never overwritten unless asked; log.jsonl, one record per step;
checkpoint-<step>/ folders, a complete one on disk at every instant (kill -9, a full disk, SIGTERM, corruption).
"""
import atexit
import contextlib
import dataclasses
import functools
import os
import random
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import atrl
import connectivity
import engine
import eval as evaluation  # the one evaluator: greedy accuracy, avg@k, intervals, lucky guesses
import rollout
from infra import checkpoints, cli, runs
from models import family
from ops import sdpa
from tasks import chains, splits, visualmath

# --------------------------------------------------------------------------------------------------
# Config: one flat dataclass; every field becomes a --flag of the same name.
# --------------------------------------------------------------------------------------------------


@dataclass
class Config:
    # Model and data
    model: str = ""                 # HF id or local checkpoint dir; "" = embedded tiny Qwen2.5-VL (models/tiny.py)
    dataset: str = "visualmath"     # synthetic "visualmath" (v2 grid) | "visualmath-v1" (2 slots) | hub name / local file or folder (name@split too)
    split: str = ""                 # split of a real --dataset to train on; "" = train (docs/benchmarks.md)
    eval_dataset: str = ""          # "" = the synthetic task's held-out seed, or the real dataset's own evaluation split (Geometry3K: test)
    eval_split: str = ""            # split of the evaluation data; "" = the benchmark's evaluation split (test / testmini)
    allow_same_rows: int = 0        # 1 = allow evaluating on the rows trained on (refused by default)
    show_choices: int = 0           # 1 = Geometry3K prompts list its 4 options; 0 = the problem alone, graded on the option text (EasyR1/verl)
    train_size: int = 2048          # VisualMath examples generated for training (ignored for real data)
    eval_size: int = 256            # held-out questions scored at every eval (greedy and avg@eval_k); 0 = no eval
    test_size: int = 0              # synthetic task: a second held-out set (seed + 20000), logged as test_*; never used to choose anything
    eval_k: int = 4                 # samples per question for avg@k at --temperature (0 = greedy accuracy only)
    min_pixels: int = 0             # image lower bound in pixels; 0 = one merged vision token (28^2 Qwen2.5-VL, 32^2 Qwen3-VL)
    max_pixels: int = 0             # upper bound; caps image tokens at max_pixels / token area; 0 = 512 tokens
    # Rollout
    prompts_per_step: int = 16      # P prompts per step over all ranks; must divide by the world size
    group_size: int = 8             # G responses per prompt (>= 2: the advantage is relative to the group)
    max_new_tokens: int = 40        # response budget in tokens; responses without EOS are "truncated" (grid: ~27 used)
    temperature: float = 1.0        # sampling temperature (1.0 = the policy itself, needed for on-policy r)
    top_p: float = 1.0              # nucleus sampling; < 1 makes samples slightly off-policy
    rollout: str = "engine"         # engine: engine.py (prefill once, static KV cache, CUDA graphs; bf16 with --bf16 1) | hf: transformers' generate, the reference
    mask_truncated: int = 1         # 1 = truncated responses get no loss (DAPO overlong filtering)
    reward: str = "answer"          # answer: 0.9*accuracy + 0.1*format | starts_with: +1 if the response starts with a digit, else -1 (RL sanity test)
    dynamic_sampling: int = 0       # 1 = replace all-equal-reward groups by fresh prompts (DAPO)
    max_refills: int = 2            # bound on dynamic-sampling refill rounds per step
    # AT-RL
    weighting: str = "atrl"         # uniform (=GRPO/DAPO) | atrl | tokens | anchor_only | low_only | random | vppo | entropy | oracle | oracle_mask | oracle_up | random_mask (v3 only)
    anchor_frac: float = 0.15       # fraction of each response's tokens called anchors (paper: ~15%)
    gain: float = 2.0               # W of an all-anchor cluster relative to an anchor-free one, before normalising
    knn: int = 0                    # k of the symmetric kNN token graph; 0 = per response, round(sqrt(n)) in [2, 10]
    resolution: float = 1.0         # Louvain modularity resolution (>1: more, smaller clusters)
    anchor_query: str = "predict"   # attention row of token t: "predict" (query t-1) or "self" (query t)
    probe_layers: str = "middle"    # decoder layers read: early|middle|late third, all, or "4,5,6" (middle: README)
    sink_debias: int = 1            # 1 = drop the first-token sink and outlier image keys, renormalise
    sink_outlier_k: float = 5.0     # an image key is a sink if its mean attention > k x the median key's
    overlap_weights: int = 1        # 1 = probe read-out and W on a worker thread, overlapping the forward (same W)
    vppo_frac: float = 0.4          # vppo arm: share of each response's tokens kept, by visual dependency (VPPO: 0.4)
    vppo_blacken: float = 0.5       # vppo arm: probability that a vision patch (14 px Qwen2.5-VL, 16 px Qwen3-VL) is blackened
    vppo_beta_min: float = 0.9      # vppo arm: smallest advantage-shaping factor (VPPO's released scripts: 0.9; code default 0.8)
    entropy_frac: float = 0.2       # entropy arm: share of each response's tokens kept, by entropy (paper: 0.2)
    # Optimization
    steps: int = 40                 # RL steps (one rollout batch each)
    lr: float = 1e-4                # AdamW peak learning rate (tiny model: 1e-4; ~1e-6 for a 3B model)
    warmup_steps: int = 3           # linear warm-up steps, then constant
    weight_decay: float = 0.0       # AdamW weight decay
    adam_eps: float = 1e-8          # AdamW epsilon; larger values make the update proportional to small gradients
    grad_clip: float = 1.0          # max global grad norm (0 = off)
    clip_low: float = 0.2           # PPO ratio clip below 1 (eps_low)
    clip_high: float = 0.28         # PPO ratio clip above 1 (DAPO clip-higher eps_high)
    dual_clip: float = 0.0          # dual-clip constant c > 1 for negative advantages (0 = off; 3.0 typical)
    loss_agg: str = "token_mean"    # token_mean (DAPO) | seq_mean_token_mean (GRPO) | seq_mean_token_sum_norm (Dr.GRPO)
    scale_rewards: str = "group"    # group (GRPO) | batch | none (Dr.GRPO)
    adv_std: str = "sample"         # std of the advantage: sample (n - 1: verl, EasyR1, TRL) | population (n; ours before #30)
    kl_coef: float = 0.0            # beta; > 0 loads a frozen reference model
    kl_estimator: str = "k3"        # k1 | k2 | k3
    ppo_epochs: int = 1             # passes over each rollout batch
    mini_batches: int = 1           # optimizer steps per pass (>1 => an extra no-grad pass for pi_old)
    micro_batch_size: int = 64      # rollouts per forward/backward (gradient accumulation below that)
    grad_checkpointing: int = 0     # 1 = recompute activations in backward (memory for time)
    freeze_vision: int = 1          # 1 = the vision tower (with Qwen3-VL's DeepStack mergers) is not trained (common for RLVR)
    bf16: int = 0                   # 1 = bf16 autocast (GPU); log-probs are always computed in fp32
    fsdp: int = 0                   # 1 = FSDP2 fully_shard instead of DDP (large models, torchrun)
    seed: int = 0                   # seeds data order, sampling, Louvain and init of everything we control
    cpu_threads: int = 1            # torch threads on CPU; tiny models run fastest on 1 (0 = torch's default)
    sdpa_cudnn: str = "auto"        # cuDNN attention (CUDA): auto = off below cuDNN 9.26, whose backward NaNs (ops/sdpa.py) | on | off
    # Logging
    out_dir: str = "runs/default"   # log.jsonl and checkpoint-<step>/ go here; a folder holding a run is never overwritten
    eval_every: int = 20            # steps between held-out evaluations (0 = only at start and end)
    save_every: int = 10            # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2       # newest checkpoint-<step>/ dirs kept (>= 1; a save briefly holds one more)
    resume: int = 0                 # 1 = continue from out_dir's newest complete checkpoint exactly where it stopped
    overwrite: int = 0              # 1 = delete the run already in out_dir (log, checkpoints, tracker files) and start over
    report_to: str = "none"         # live tracking: none | tensorboard (out_dir/tensorboard) | wandb (WANDB_MODE=offline works)
    log_update: int = 0             # 1 = log update_norm, ||weights after - before|| per step (one copy of the trainable weights)
    debug_nan_step: int = -1        # test hook: poison the loss at this step to exercise the skip path


cfg = cli.parse_config(Config, __doc__.split("\n")[0], "train.py")  # --help: every field with its comment
# Every value is checked before anything is loaded or written: one line naming the value and what to do.
runs.check_model("train.py", "model", cfg.model)
cli.check_data("train.py", "dataset", cfg.dataset, builtin=visualmath.TASKS)
cli.check_data("train.py", "eval_dataset", cfg.eval_dataset, builtin=("",))
runs.check_tracker("train.py", cfg.report_to)
switches = ("mask_truncated", "dynamic_sampling", "sink_debias", "overlap_weights", "grad_checkpointing", "freeze_vision",
            "bf16", "fsdp", "resume", "overwrite", "log_update", "allow_same_rows", "show_choices")
cli.check("train.py", cfg, [(n, getattr(cfg, n) in (0, 1), "use 0 or 1") for n in switches] + [
    ("weighting", cfg.weighting in atrl.MODES, f"use one of {', '.join(atrl.MODES)}"),
    ("weighting", cfg.weighting not in atrl.CLASS_MODES or cfg.dataset in chains.VARIANTS,
     f"the oracle arms need known token classes: --dataset one of {', '.join(chains.VARIANTS)}"),
    *cli.one_of(cfg, loss_agg=("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"), rollout=("engine", "hf"),
                scale_rewards=("group", "batch", "none"), adv_std=("sample", "population"), kl_estimator=("k1", "k2", "k3"),
                anchor_query=("predict", "self"), reward=("answer", "starts_with"), sdpa_cudnn=sdpa.CHOICES),
    ("probe_layers", cfg.probe_layers in ("early", "middle", "late", "all") or re.fullmatch(r"\d+(,\d+)*", cfg.probe_layers),
     "use early, middle, late, all or a comma list of layer indices like 4,5,6"),
    ("group_size", cfg.group_size >= 2, "group-relative advantages need at least 2 responses per prompt"),
    *[(n, getattr(cfg, n) >= 1, "must be >= 1") for n in ("train_size", "prompts_per_step", "max_new_tokens", "steps",
                                                          "ppo_epochs", "mini_batches", "micro_batch_size",
                                                          "keep_checkpoints")],
    *[(n, getattr(cfg, n) >= 0, "must be >= 0") for n in ("max_refills", "warmup_steps", "weight_decay", "grad_clip",
                                                          "kl_coef", "seed", "cpu_threads", "eval_every", "save_every",
                                                          "eval_size", "eval_k", "test_size", "min_pixels")],
    ("test_size", cfg.test_size == 0 or cfg.dataset in visualmath.TASKS, "a test set is drawn from the synthetic task only"),
    ("log_update", not (cfg.log_update and cfg.fsdp), "the update norm reads whole weights: use it without --fsdp"),
    ("knn", cfg.knn >= 0, "must be >= 0 (0 = round(sqrt(n)) per response, in [2, 10])"),
    ("eval_k", cfg.eval_k == 0 or cfg.temperature > 0, "avg@k samples at --temperature, which must then be > 0"),
    ("max_pixels", cfg.max_pixels == 0 or cfg.max_pixels >= cfg.min_pixels, f"use 0 or a value >= --min_pixels {cfg.min_pixels}"),
    ("temperature", cfg.temperature > 0, "must be > 0: RL samples its groups (1.0 = the policy itself)"),
    *[(n, 0 < getattr(cfg, n) <= 1, "must be in (0, 1]") for n in ("top_p", "anchor_frac", "vppo_frac", "entropy_frac", "vppo_beta_min")],
    ("gain", cfg.gain > 0, "must be > 0 so weights stay positive (1 = no reweighting, default 2)"),
    ("vppo_blacken", 0 <= cfg.vppo_blacken <= 1, "must be a probability in [0, 1] (VPPO: 0.5)"),
    ("resolution", cfg.resolution > 0, "must be > 0 (1.0 = standard modularity)"),
    ("sink_outlier_k", cfg.sink_outlier_k > 0, "must be > 0 (default 5)"),
    ("lr", cfg.lr > 0, "must be > 0 (1e-4 for the tiny model, ~1e-6 for 3B)"),
    ("adam_eps", cfg.adam_eps > 0, "must be > 0 (default 1e-8)"),
    ("clip_low", 0 < cfg.clip_low < 1, "must be in (0, 1) (PPO: 0.2)"),
    ("clip_high", cfg.clip_high > 0, "must be > 0 (DAPO clip-higher: 0.28)"),
    ("dual_clip", cfg.dual_clip == 0 or cfg.dual_clip > 1, "use 0 (off) or a value > 1 (3.0 is typical)"),
    ("out_dir", cfg.out_dir != "", "name a folder for the log and checkpoints"),
])

# --------------------------------------------------------------------------------------------------
# Setup: torchrun/DDP from environment variables, devices, seeds, the run directory (infra/runs.py).
# --------------------------------------------------------------------------------------------------

rank, world, local_rank, device = runs.setup_distributed()  # torchrun's environment variables -> process group
distributed, master = dist.is_initialized(), rank == 0
all_reduce = runs.all_reduce  # sum over ranks, in place; a no-op on one process
print0 = functools.partial(print, flush=True) if master else lambda *args: None  # rank 0 speaks for all

if cfg.prompts_per_step % world:
    cli.config_error("train.py", f"--prompts_per_step {cfg.prompts_per_step} does not divide by the world size {world}: "
                                 f"use a multiple of {world} so every rank gets whole groups")
prompts_per_rank = cfg.prompts_per_step // world
rollouts_per_rank = prompts_per_rank * cfg.group_size                  # B on this rank
mini_batch = rollouts_per_rank // cfg.mini_batches
if rollouts_per_rank % cfg.mini_batches or mini_batch % min(cfg.micro_batch_size, mini_batch):
    cli.config_error("train.py", f"{rollouts_per_rank} rollouts per rank must split into --mini_batches {cfg.mini_batches} "
                                 f"of whole --micro_batch_size {cfg.micro_batch_size} chunks")
micro = min(cfg.micro_batch_size, mini_batch)
# NOTE: under FSDP every forward is a collective, so all ranks must run the same number of them
synced = bool(distributed and cfg.fsdp)  # generate keeps stepping (synced_gpus) until every rank is done
if synced and (cfg.dynamic_sampling or cfg.eval_size % world):
    cli.config_error("train.py", f"--fsdp 1 needs --dynamic_sampling 0 and --eval_size divisible by {world} (got "
                                 f"{cfg.dynamic_sampling}, {cfg.eval_size}): ranks must run the same number of forwards")
random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed)
if device.type == "cpu" and cfg.cpu_threads > 0:  # a 1M-parameter model loses more to thread sync than it gains
    torch.set_num_threads(cfg.cpu_threads)
# The run directory: refuse to overwrite a run, or find the checkpoint to resume (read-only; claimed below,
# once the model and the data have loaded, so that a run that cannot start writes nothing)
resume_dir, resume_state = runs.prepare_run_dir("train.py", cfg.out_dir, cfg.resume, cfg.overwrite)
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16))
kernels = sdpa.Kernels(sdpa.setup(device, cfg.sdpa_cudnn))  # cuDNN attention on/off; records what each phase ran

# --------------------------------------------------------------------------------------------------
# Model, processor, data
# --------------------------------------------------------------------------------------------------

if cfg.model:
    model_path = cfg.model
else:
    from models import tiny  # the embedded default: builds (once) and caches a warm-started tiny Qwen2.5-VL
    model_path = tiny.ensure_tiny_model() if master else tiny.DEFAULT_DIR
    if distributed:
        dist.barrier()  # other ranks wait for rank 0 to build the cache
load_path = resume_dir or model_path
try:  # models/family.py: the checkpoint's family read first, every weight matched (never a half-random model)
    model = family.load_model(load_path).to(device)
    # a frozen pi_ref (GRPO) only with a KL term: DAPO/Dr.GRPO drop the reference model (kl_coef 0, the default)
    ref_model = family.load_model(model_path).to(device).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    tokenizer, image_processor = family.load_processor(load_path)
except (OSError, ValueError) as err:
    cli.config_error("train.py", f"--model {str(err).splitlines()[0][:400]}")
cfg.min_pixels, cfg.max_pixels = family.pixel_bounds(image_processor, cfg.min_pixels, cfg.max_pixels, 512, "train.py")
if cfg.freeze_vision:
    model.model.visual.requires_grad_(False)
if cfg.grad_checkpointing:
    family.checkpoint_activations(model)
policy = model  # the bare module: generate, the probe and save_pretrained use it; `train_model` is wrapped
train_model = runs.wrap_for_training(model, bool(cfg.fsdp), device, local_rank)  # DDP, FSDP2, or the model itself

params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))

try:  # tasks/splits.py: train on train, evaluate on the evaluation split, never both on one set; errors in one line
    train_data, eval_data, test_data, data_lines = splits.training_data(cfg.dataset, cfg.split, cfg.eval_dataset,
        cfg.eval_split, cfg.train_size, cfg.eval_size, cfg.seed, bool(cfg.show_choices), bool(cfg.allow_same_rows), cfg.test_size)
except ValueError as err:
    cli.config_error("train.py", f"--dataset {cfg.dataset!r} / --eval_dataset {cfg.eval_dataset!r}: {err}")
image_token_id = model.config.image_token_id
try:
    probe_layers = list(connectivity.layer_band(cfg.probe_layers, model.config.text_config.num_hidden_layers))
except ValueError as err:
    cli.config_error("train.py", f"--probe_layers: {err}")
if distributed:
    dist.barrier()  # every rank has loaded before the master writes
run_lock = runs.claim_run_dir("train.py", cfg.out_dir, cfg.overwrite) if master else None  # held until exit
use_probe = cfg.weighting in atrl.PROBE_MODES  # GRPO/DAPO and the peer arms (vppo, entropy) need no attention
probe_context = (connectivity.probe(policy, layers=probe_layers, background=bool(cfg.overlap_weights))
                 if use_probe else contextlib.nullcontext())
probe = probe_context.__enter__()  # installed for the whole run; idle (pure delegation) unless armed
atexit.register(probe_context.__exit__, None, None, None)  # removed on any way out (a no-op after the cleanup)
# the engine decodes from the policy, or a bf16 / FSDP2 copy refresh() updates; its KV cache holds one rollout batch
decode_engine = (engine.DecodeEngine(policy, torch.bfloat16 if cfg.bf16 else None, max_rows=rollouts_per_rank)
                 if cfg.rollout == "engine" else None)
print0("\n".join(data_lines))  # "data: <source> split=<name> rows=<n>": what trains and what evaluates
print0(f"model {model_path} | {sum(p.numel() for p in params) / 1e6:.2f}M trainable | world {world} | B/rank "
       f"{rollouts_per_rank} = {prompts_per_rank} prompts x G {cfg.group_size} | micro {micro} | {kernels.setup['line']}")

# --------------------------------------------------------------------------------------------------
# Helpers: log-probs, the prompt stream, probe read-out, logging, evaluation, checkpoints.
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def epoch_order(epoch):
    return torch.randperm(len(train_data), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))


def prompts_for_step(step, n):
    """This rank's dataset rows for `step`: an endless stream of seeded epoch permutations cut into steps of
    prompts_per_step, strided over ranks. The position is a pure function of the step, so resuming needs no
    saved iterator state."""
    rows, keys = [], []
    for j in range(step * cfg.prompts_per_step + rank, (step + 1) * cfg.prompts_per_step, world)[:n]:
        epoch, pos = divmod(j, len(train_data))
        rows.append(train_data[int(epoch_order(epoch)[pos])])
        keys.append((cfg.seed + 1) * 1_000_000_007 + j)  # sampling noise key: depends on the stream slot only
    return rows, keys


def sample(rows, keys):
    with runs.gathered(train_model, synced), kernels.once("rollout"):  # the kernels of the first rollout are logged
        return rollout.sample_groups(policy, tokenizer, image_processor, rows, cfg.group_size, keys,
                                     max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                     synced=synced, engine=decode_engine)


def arm_probe(mb, mask):
    """Tell the probe which attention rows to read in the next forward (one per response token) and what to
    make of them: this micro-batch's W, computed as soon as the last probed layer is read -- on the probe's
    worker thread, while the rest of the forward runs (--overlap_weights 1), or inline."""
    if use_probe:
        probe.arm(connectivity.query_positions(mb["full_response_mask"], cfg.anchor_query),
                  mb["input_ids"] == image_token_id, mb["attention_mask"],  # the mask matters for FA2 only
                  then=functools.partial(weights_from_probe, mask=mask, keys=mb["keys"]))


def weights_from_probe(captured, mask, keys):
    """W (b, T) and its stats from what the probe captured, plus the seconds it took (run by the probe)."""
    t = time.perf_counter()
    pad = mask.shape[1] - captured["patterns"].shape[1]  # the probe's T is the longest response in this micro-batch
    captured["patterns"] = torch.nn.functional.pad(captured["patterns"], (0, 0, 0, pad))  # (b, T, V)
    captured["sink"] = torch.nn.functional.pad(captured["sink"], (0, pad))                # (b, T)
    patterns, rho = connectivity.debias_sinks(captured["patterns"], captured["sink"], captured["image_valid"],
                                              outlier_k=cfg.sink_outlier_k, enabled=bool(cfg.sink_debias))
    # the kNN graph is built where the patterns are (the GPU in real runs); only Louvain runs on the CPU
    W, st = atrl.token_weights_with_stats(patterns, rho, mask.bool(), mode=cfg.weighting,
                                          anchor_frac=cfg.anchor_frac, gain=cfg.gain, k=cfg.knn,
                                          resolution=cfg.resolution, seed=keys.tolist())  # per-rollout seeds
    return W.to(mask.device), st, time.perf_counter() - t


def collect_weights(mask, stats, timing, entropy, i):
    """W (b, T) for the micro-batch (rows i, i + 1, ...) whose forward just ran: from the probe (AT-RL's arms; waits
    for it), from the forward's per-token entropy (entropy arm), from the known token classes (oracle arms), or
    the mask itself (uniform)."""
    if cfg.weighting in atrl.CLASS_MODES:
        rows = classes[i:i + len(mask)]                                                      # (b, T)
        W, st = atrl.token_weights_with_stats(None, None, mask.bool(), cfg.weighting, gain=cfg.gain,
                                              seed=batch["keys"][i:i + len(mask)].tolist(),
                                              perception=rows == chains.PERCEPTION, noise=chains.is_noise(rows))
        stats.append(st)
        return W
    if cfg.weighting == "entropy":
        W, st = atrl.token_weights_with_stats(None, None, mask.bool(), "entropy", entropy=entropy,
                                              select_frac=cfg.entropy_frac)
        stats.append(st)
        return W
    if not use_probe:
        return mask.clone()
    t = time.perf_counter()
    W, st, busy = probe.outcome()
    stats.append(st)
    timing["weights"] += busy                            # time spent computing W (on the worker if overlapped)
    timing["weights_wait"] += time.perf_counter() - t    # time the loop stood still waiting for it
    return W


def old_policy_pass(batch, loss_mask, P, stats, timing):
    """(log pi_old (B, T), W (B, T)) from a no-grad pass over the batch before any update, the probe riding along.
    Needed with several updates per batch (PPO epochs, mini-batches) and by vppo, whose W compares each token's
    log-prob given the image with its log-prob given the image with half its patches blackened (one more
    forward), normalised over the rank's whole batch (VPPO normalises over its mini-batch)."""
    old_logp, W, perturbed_logp = (torch.zeros_like(loss_mask) for _ in range(3))                # (B, T) each
    with torch.no_grad():
        for i in range(0, len(loss_mask), micro):
            mb, mask = rollout.slice_batch(batch, i, i + micro), loss_mask[i:i + micro]
            arm_probe(mb, mask)
            old_logp[i:i + micro], entropy = rollout.token_logprobs(policy, mb, P, autocast)
            if cfg.weighting == "vppo":
                perturbed = rollout.blacken_patches(mb, image_processor, cfg.vppo_blacken)
                perturbed_logp[i:i + micro] = rollout.token_logprobs(policy, perturbed, P, autocast)[0]
            else:
                W[i:i + micro] = collect_weights(mask, stats, timing, entropy, i)
    if cfg.weighting == "vppo":
        W, st = atrl.token_weights_with_stats(None, None, loss_mask.bool(), "vppo", select_frac=cfg.vppo_frac,
                                              dependency=atrl.visual_dependency(old_logp, perturbed_logp), beta_min=cfg.vppo_beta_min)
        stats.append(st)
    return old_logp, W


def log_record(step, batch, stats, sums, grad_norm, skipped, n_updates, timing):
    """One JSONL record: batch means over all ranks (sums all-reduced, then divided by global counts)."""
    n_stats = max(len(stats), 1)
    local = torch.tensor([batch["rewards"].sum(), batch["accuracy"].sum(), batch["format"].sum(), len(batch["rewards"]),
                          batch["response_mask"].float().sum(), batch["truncated"].float().sum(),
                          rollout.count_flat_groups(batch["rewards"].cpu(), cfg.group_size),
                          sum(s["anchor_frac"] for s in stats) / n_stats, sum(s["clusters"] for s in stats) / n_stats,
                          sum(s["W_max"] for s in stats) / n_stats, sum(s["W_anchor_mean"] for s in stats) / n_stats,
                          1.0, batch["lucky"].sum()], dtype=torch.float64)
    g = all_reduce(local).tolist()
    n, ranks = g[3], g[11]
    rec = {"step": step, "reward": g[0] / n, "accuracy": g[1] / n, "format": g[2] / n, "response_len": g[4] / n,
           "truncated": g[5] / n, "zero_std_groups": g[6] * cfg.group_size / n,
           "anchor_frac": g[7] / ranks, "clusters": g[8] / ranks, "w_max": g[9] / ranks,
           "w_anchor_mean": g[10] / ranks, "lucky": g[12] / max(g[1], 1.0)}
    # loss parts: each rank summed its micro-batches over global denominators; the rank sum is the batch value
    parts = all_reduce(torch.tensor([sums[k] for k in sorted(sums)], dtype=torch.float64)).tolist()
    rec.update({k: v / n_updates for k, v in zip(sorted(sums), parts)})
    rec.update({"grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0], "skipped": skipped})
    rec.update({f"time_{k}": v for k, v in timing.items()})
    return {**rec, **({"kernels": kernels.summary(probe)} if step == 0 or skipped else {})}  # ops/sdpa.py: step 0, skips


def evaluate():
    """Held-out greedy accuracy and avg@eval_k (eval.evaluate, the one evaluator), each with n and a 95% interval,
    plus right readings and the lucky-guess share on VisualMath; questions rank-strided, counts all-reduced.
    eval_* on the held-out set, test_* on the second one (--test_size) that nothing in a run looks at."""
    respond = evaluation.model_responder(policy, tokenizer, image_processor, cfg.max_new_tokens, cfg.top_p,
                                         cfg.min_pixels, cfg.max_pixels, synced, decode_engine)
    keep = ("n", "accuracy", "accuracy_ci", "format", "read", "lucky", f"avg@{cfg.eval_k}", f"avg@{cfg.eval_k}_ci",
            f"read@{cfg.eval_k}", f"lucky@{cfg.eval_k}")
    out = {}
    for prefix, rows in (("eval", eval_data), ("test", test_data)):
        if rows is not None:
            with runs.gathered(train_model, synced):
                metrics = evaluation.evaluate(rows, respond, rank, world, True, cfg.eval_k, cfg.temperature, batch_size=64,
                                              seed=cfg.seed, reduce=lambda t: all_reduce(t.to(device)).cpu())
            out.update({f"{prefix}_{k}": metrics[k] for k in keep if k in metrics})
    return out


def save_checkpoint(step):
    """out_dir/checkpoint-<step>/: model + processor (a normal from_pretrained dir) + optimizer/scheduler/RNG
    state (state.pt, tensors and plain values only). checkpoints.save_checkpoint writes it under a temp name, renames
    it into place and then deletes the old ones, so a kill at any instant leaves a complete checkpoint."""
    # under FSDP2 every rank gathers the full (unsharded) tensors, and rank 0 writes them
    model_state, optim_state = checkpoints.training_state(model, optimizer, sharded=distributed and cfg.fsdp)
    if not master:
        return

    def write_model(path):
        policy.save_pretrained(path, state_dict=model_state)
        tokenizer.save_pretrained(path)
        image_processor.save_pretrained(path)
    state = {"step": step, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
             "config": dataclasses.asdict(cfg), "rng": checkpoints.rng_state()}
    checkpoints.save_checkpoint(cfg.out_dir, step, write_model, state, keep=cfg.keep_checkpoints)


start_step = 0
log_path = os.path.join(cfg.out_dir, "log.jsonl")
if resume_dir:
    state = resume_state  # loaded with weights_only=True by checkpoints.latest_checkpoint
    start_step = checkpoints.restore(state, model, optimizer, scheduler, sharded=distributed and cfg.fsdp)
    changed = {k: (v, getattr(cfg, k)) for k, v in state["config"].items()
               if k not in ("steps", "resume", "overwrite", "report_to") and getattr(cfg, k, v) != v}
    print0(f"resumed from {resume_dir} at step {start_step}" + (f"; changed settings (old, new): {changed}" if changed else ""))
tracker = runs.NoTracker()
if master:  # the log keeps records of steps before the checkpoint only: the others are redone (infra/runs.py, rule 3)
    runs.start_log(log_path, {"config": dataclasses.asdict(cfg), "world": world}, start_step)
    tracker = runs.open_tracker(cfg.report_to, cfg.out_dir, dataclasses.asdict(cfg), start_step)

# --------------------------------------------------------------------------------------------------
# The RL loop
# --------------------------------------------------------------------------------------------------

if start_step == 0:
    metrics0 = evaluate()
    for prefix, name in (("eval_", "held-out"), ("test_", "test")):
        if f"{prefix}accuracy" in metrics0:
            print0(f"before RL: {name} {evaluation.describe(metrics0, cfg.eval_k, prefix)}")
    if master and metrics0:
        runs.append_log(log_path, {"step": -1, **metrics0})
        tracker.log({"step": -1, **metrics0})
preemption, stop = runs.Preemption(), 0  # from here SIGTERM/SIGINT stop the run after the step in flight (infra/runs.py)
bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, disable=not master, desc="RL")
for step in bar:
    t0 = time.perf_counter()
    # 1) rollout: G samples per prompt, all on this rank (a group must never be split across ranks)
    policy.eval()
    batch = rollout.score(sample(*prompts_for_step(step, prompts_per_rank)), cfg.reward)  # same on any world size
    # 2) rewards are in `batch`; dynamic sampling swaps all-equal groups for fresh prompts (bounded)
    for refill in range(cfg.max_refills if cfg.dynamic_sampling else 0):
        batch, n_flat = rollout.drop_flat_groups(batch, cfg.group_size)
        if n_flat == 0:
            break
        extra = prompts_for_step(cfg.steps + step * cfg.max_refills + refill, n_flat)  # slots no step uses
        batch = rollout.concat(batch, rollout.score(sample(*extra), cfg.reward), tokenizer.pad_token_id)
    batch = rollout.to_device(batch, device)
    # VisualMath v3: every response token's class, read off its text (tasks/chains.py), for the oracle arms and the log
    classes = chains.label_batch(tokenizer, batch).to(device) if cfg.dataset in chains.VARIANTS else None   # (B, T)
    t_rollout = time.perf_counter() - t0
    # 3) group advantages A[i] (zero for all-equal groups: they carry no signal)
    adv = atrl.group_advantages(batch["rewards"], cfg.group_size, scale=cfg.scale_rewards, std=cfg.adv_std)  # (B,)
    loss_mask = batch["response_mask"].float()                                                  # (B, T)
    if cfg.mask_truncated:  # DAPO overlong filtering: a cut-off answer is not evidence of a wrong one
        loss_mask = loss_mask * (~batch["truncated"]).float()[:, None]
    P = batch["prompt_len"]
    # 4) connectivity -> anchors -> clusters -> W, read inside the first forward over each micro-batch: a no-grad
    #    pi_old pass with several updates per batch (or for vppo, which compares it with a blackened image's),
    #    else the training forward itself
    W, old_logp = torch.zeros_like(loss_mask), torch.zeros_like(loss_mask)                   # (B, T)
    have_weights, stats, timing = [False] * len(adv), [], {"weights": 0.0, "weights_wait": 0.0}
    if cfg.ppo_epochs > 1 or cfg.mini_batches > 1 or cfg.weighting == "vppo":
        old_logp, W = old_policy_pass(batch, loss_mask, P, stats, timing)
        have_weights = [True] * len(adv)
    # 5) loss + backward over micro-batches, with global (all-rank, all-micro-batch) denominators
    policy.train()
    t1, wait_before = time.perf_counter(), timing["weights_wait"]
    sums, skipped, grad_norm = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0}, 0, 0.0
    before = [p.detach().clone() for p in params] if cfg.log_update else None  # the weights, to measure the step by
    for epoch in range(cfg.ppo_epochs):
        for m0 in range(0, len(adv), mini_batch):
            m_mask = loss_mask[m0:m0 + mini_batch]
            counts = all_reduce(torch.stack([m_mask.sum(), (m_mask.sum(-1) > 0).float().sum()]).double())
            n_tokens, n_seqs = max(counts[0].item(), 1.0), max(counts[1].item(), 1.0)
            for i in range(m0, m0 + mini_batch, micro):
                mb, mask = rollout.slice_batch(batch, i, i + micro), loss_mask[i:i + micro]
                first = not have_weights[i]
                if first:
                    arm_probe(mb, mask)
                with kernels.once("forward"):
                    logp, entropy = rollout.token_logprobs(train_model, mb, P, autocast)
                if first:  # on-policy single pass: pi_old = pi (ratio 1) and W from this very forward
                    old_logp[i:i + micro] = logp.detach()
                    W[i:i + micro] = collect_weights(mask, stats, timing, entropy, i)
                    have_weights[i:i + micro] = [True] * micro
                adv_tok = atrl.token_advantages(adv[i:i + micro], W[i:i + micro])          # (b, T) = W * A
                pg_tok, clipped = atrl.ppo_clip_loss(logp, old_logp[i:i + micro], adv_tok, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
                kl_tok = torch.zeros_like(pg_tok)
                if ref_model is not None:
                    with torch.no_grad():
                        ref_logp = rollout.token_logprobs(ref_model, mb, P, autocast)[0]
                    kl_tok = atrl.kl_penalty(logp, ref_logp, cfg.kl_estimator)
                pg_loss = atrl.aggregate_loss(pg_tok, mask, cfg.loss_agg, n_tokens, n_seqs, cfg.max_new_tokens)
                loss = pg_loss + cfg.kl_coef * atrl.aggregate_loss(kl_tok, mask, cfg.loss_agg, n_tokens, n_seqs, cfg.max_new_tokens)
                loss = loss * float("nan") if step == cfg.debug_nan_step else loss
                last = i + micro >= m0 + mini_batch  # DDP: all-reduce gradients once, after the last micro-batch
                with train_model.no_sync() if distributed and not cfg.fsdp and not last else contextlib.nullcontext(), kernels.once("backward"):
                    (loss * world).backward()  # DDP averages gradients over ranks; "* world" turns that into a sum
                for k, v in (("loss", loss), ("pg_loss", pg_loss), ("kl", (kl_tok * mask).sum() / n_tokens),
                             ("clip_frac", (clipped * mask).sum() / n_tokens), ("entropy", (entropy * mask).sum() / n_tokens)):
                    sums[k] += v.item()
            # 6) optimizer step; a non-finite loss or gradient on any rank skips it on every rank
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if all_reduce(torch.tensor([float(not torch.isfinite(grad_norm))])).item() > 0:
                skipped += 1
                print0(f"step {step}: non-finite loss or gradient (grad norm {grad_norm}, {kernels.name('backward')}) -- update skipped")
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    moved = sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(params, before)) if before else None  # ||dW||^2
    if decode_engine is not None:
        decode_engine.refresh()  # a copy (bf16 / FSDP2) takes the update; decoding from the policy itself: no-op
    # 7) log: rank-local sums all-reduced into batch means (README: "Logged keys")
    rec = log_record(step, batch, stats, sums, grad_norm, skipped, cfg.ppo_epochs * cfg.mini_batches,
                     {"rollout": t_rollout, **timing, "train": time.perf_counter() - t1 - (timing["weights_wait"] - wait_before),
                      "step": time.perf_counter() - t0})
    rec.update({"update_norm": moved ** 0.5} if moved is not None else {})
    if classes is not None:  # v3: the realised W of every class, and each class's share of the push on its tokens'
        push = (W * adv[:, None]).abs() * (1 - old_logp.exp())  # own logit, |dL/dz_y| = |A_AT| (1 - pi(y)) at ratio 1
        rec.update({**chains.class_means(W, loss_mask, classes), **chains.class_shares(push, loss_mask, classes)})
    # 8) eval / checkpoint. NOTE: the record is on disk before the checkpoint: a kill in between redoes the step
    #    on resume (its record is dropped, then written again) instead of losing the record (infra/runs.py, rule 3)
    if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
        rec.update(evaluate())
    if master:
        runs.append_log(log_path, rec)
        tracker.log(rec)  # NoTracker unless --report_to tensorboard|wandb
        bar.set_postfix(reward=f"{rec['reward']:.3f}", acc=f"{rec['accuracy']:.3f}")
        tqdm.write(f"step {step:4d} | reward {rec['reward']:.3f} acc {rec['accuracy']:.3f} fmt {rec['format']:.2f} | "
                   f"loss {rec['loss']:+.4f} clip {rec['clip_frac']:.3f} ent {rec['entropy']:.2f} | anchors "
                   f"{rec['anchor_frac']:.2f} clusters {rec['clusters']:.1f} | {rec['time_step']:.1f}s"
                   + (f" | held-out {evaluation.describe(rec, cfg.eval_k, 'eval_')}" if "eval_accuracy" in rec else ""))
    # a signal to any rank stops every rank after this step, saved (an all-reduce: every rank asks here)
    stop = preemption.requested(device) if step + 1 < cfg.steps else 0
    if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps or stop:
        save_checkpoint(step + 1)
    if stop:
        break

# --------------------------------------------------------------------------------------------------
# Cleanup
# --------------------------------------------------------------------------------------------------

probe_context.__exit__(None, None, None)  # restore the model's own attention implementation
tracker.close()
if not stop:
    print0(f"done: {cfg.steps} steps, log in {log_path}, checkpoint in "
           f"{os.path.join(cfg.out_dir, checkpoints.newest_checkpoint_name(cfg.out_dir))}")
elif master:
    print(runs.stopped_line(stop, step, cfg.out_dir), file=sys.stderr)
if distributed:  # the ranks leave together, with nothing run after the run is on disk (infra/runs.py, rule 10)
    preemption.ignore()  # a rank that exits 143 first makes torchrun SIGTERM the others: no second request
    dist.barrier()  # NOTE: the master may still be writing the checkpoint
    dist.destroy_process_group()
    runs.leave(128 + stop if stop else 0)
if stop:
    sys.exit(128 + stop)  # what a shell reports for a process the signal ended (143 SIGTERM, 130 SIGINT): infra/runs.py rule 9
