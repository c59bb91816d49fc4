"""The embedded default model: a tiny Qwen2.5-VL (or Qwen3-VL) built offline, then warm-started by SFT on VisualMath.

AT-RL needs a vision-language policy that already *partly* solves its task (RL needs some rewarded
rollouts to learn from) and that runs on a laptop CPU. We build one from nothing, with the same classes
and the same save/load path as the real `Qwen/Qwen2.5-VL-3B-Instruct`:

    tokenizer   byte-level BPE trained here on the tasks' text, plus Qwen's special tokens
                (<|im_start|>, <|im_end|>, <|vision_start|>, <|image_pad|>, ...) and a Qwen chat template
    model       Qwen2_5_VLForConditionalGeneration, random init, 0.96M parameters:
                  vision: patch 14, merge 2 (one LLM token per 28x28 px), depth 2, width 64
                  text:   4 layers x 128 (MLP 256), 4 heads / 2 kv heads, mRoPE sections [4, 6, 6]
                          over head_dim 32, embeddings tied to the LM head
    SFT         next-token cross-entropy on the reference responses only (prompt tokens masked):
                  loss = - sum_{t in response} log p(y_t | image, prompt, y_<t) / #response tokens

A curriculum of three lessons, each a fixed number of steps (no early stop: a stop at "40% on a probe"
lands on a knife edge that another machine's float path tips either way):

    1. one number   (visualmath-v1, one 28-px slot = one vision token, "What is a?"): learn to read a digit.
                    Reading from a single token starts within ~50 steps; on the 16-token grid from random
                    init it never started in 1,800 steps, on two slots it starts after 200-500 steps.
    2. two numbers  (visualmath-v1, "What is a + b?"): read two tokens in order, write a chain.
    3. the grid     (visualmath, the RL task), written by an imperfect teacher: 1, 3 and 5 are read as
                    7, 8 and 6 with probability `slip` (0.7), the chain computed from what was read.

Lesson 3 runs to convergence, so the warm start ends at a *stable* partial skill: it reads like its
teacher, as a calibrated probability (greedy decoding writes the slip, sampling writes the true digit about
3 times in 10). Its held-out greedy accuracy is about P(no 1, 3 or 5 among four digits) = 0.7^4 = 0.24
whatever the seed or machine, and the only way up is for RL to move the perception tokens -- what AT-RL is
about. The figures of a build (greedy accuracy and avg@4 with 95% intervals, right readings, lucky
guesses) are printed and saved in sft_report.json. Measured (2-core VM, one thread, n = 256): seeds 10, 11,
12 took 175-195 s and gave greedy 0.230, 0.262, 0.246 (read right: the same), avg@4 0.35-0.39, lucky 0%.

`--task visualmath-v3` (or -fixed, -fork; tasks/chains.py) makes lesson 3 the v3 chain, for 800 steps (at 400 the
chain's copies still re-read the image: 15% of first steps disagreed with the read list and 30% of sampled
right answers were lucky), with a tokenizer that also learns v3's text. Seed 0 (2-core VM shared with other
work, load ~4: 1,247 s): greedy 0.234, avg@4 0.384, read right 0.23 (sampled 0.39), lucky 0% (sampled 5%).

Where this departs from a real Qwen2.5-VL:
1. Sizes are tiny and the tokenizer is ours (vocab 512). Its pre-tokenizer splits digits only, not words,
   so recurring phrases become single tokens: a grid prompt is ~45 tokens with its 16 image tokens, a
   response ~27.
2. Only full attention in the vision tower (our images fit in one 112-px window anyway).
3. Word embeddings are tied to the LM head (as in Qwen2.5-VL-3B) to save parameters.

`--family qwen3_vl` builds the same thing as a Qwen3-VL (models/family.py; docs/families.md): the same decoder
widths, q/k normalised per head, head_dim 32 = hidden / heads or, with `--head_dim 64`, a head_dim that is not
hidden / heads (as Qwen3-VL-4B's 128 vs 2560 / 32 = 80); vision patch 16 (one LLM token per 32 x 32 px: VisualMath's
28-px cells are resized to 32 px, still one cell per token), DeepStack into decoder layers 0 and 1; its tokenizer
learns prompts without a system turn (Qwen3-VL's template has none). The tests build it at random (conftest.py);
its warm start is not measured (the README's figures are the Qwen2.5-VL build's).

Run:  python models/tiny.py                       # builds cache/tiny-qwen2.5-vl (skips if present), prints its figures
      python models/tiny.py --seed 3 --out D      # another warm start;  --force rebuilds;  ATRL_CACHE=dir moves cache/
      python models/tiny.py --task visualmath-v3 --out D   # a v3 warm start (experiments/v3.py builds its own)
      python models/tiny.py --family qwen3_vl --head_dim 64  # a tiny Qwen3-VL, into cache/tiny-qwen3-vl
Tests: pytest tests/test_tiny.py (random checkpoints and a few SFT steps only: the full build is not run there).
"""

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import sys
import time

import torch

if __package__ in (None, ""):  # run as `python models/tiny.py`: the repository root, not models/, heads the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import engine
import eval as evaluation  # the one evaluator (train.py and eval.py use it too)
import rollout
from infra import cli
from models import family
from tasks import chains, visualmath

# --------------------------------------------------------------------------------------------------
# Paths and sizes
# --------------------------------------------------------------------------------------------------

DEFAULT_DIR = cli.TINY_MODEL_DIR  # cache/tiny-qwen2.5-vl, or $ATRL_CACHE/tiny-qwen2.5-vl

SPECIAL_TOKENS = [  # Qwen2.5-VL's special tokens, same strings (ids differ: ours start at 0)
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
VOCAB_SIZE = 512  # BPE target size; 256 byte symbols + specials + merges of frequent task words
V3_VOCAB_SIZE = 600  # v3's chains hold more phrases: 600 gives ~53 tokens per response (512: ~75, 640: ~50)
MIN_PIXELS, MAX_PIXELS = 28 * 28, 28 * 28 * 256  # Qwen2.5-VL's image processor bounds saved with the checkpoint

TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
            # mRoPE: head_dim 32 -> 16 rotary frequencies, split over (temporal, height, width)
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
VISION = dict(depth=2, hidden_size=64, intermediate_size=256, num_heads=4, in_channels=3, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0, 1],
              out_hidden_size=TEXT["hidden_size"])
# Qwen3-VL at the same widths: head_dim explicit (make_model), mRoPE laid out interleaved; vision patch 16, a learned
# 8 x 8 position grid (resampled per image), DeepStack features into decoder layers 0 and 1 (one per vision block)
QWEN3_VISION = dict(depth=2, hidden_size=64, intermediate_size=256, num_heads=4, in_channels=3, patch_size=16,
                    spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                    deepstack_visual_indexes=[0, 1], out_hidden_size=TEXT["hidden_size"])
# What each family's chat template puts before the user turn (models/family.py; tests/test_tiny.py renders both):
# the tokenizer learns the text its checkpoint's prompts will hold
SYSTEM_TURN = {"qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "qwen3_vl": ""}

# --------------------------------------------------------------------------------------------------
# Tokenizer, image processor, random model
# --------------------------------------------------------------------------------------------------


def _tokenizer_corpus(n=400, seed=0, task="visualmath", model_type="qwen2_5_vl"):
    """Texts the tokenizer is trained on: chat-formatted prompts and responses of the v2 and v1 tasks over many
    knobs, and for a v3 task as many v3 chains again (all three variants, so they share one tokenizer)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        if i % 2:
            examples.append(visualmath.grid_example(rng, n_digits=rng.randint(2, 8), n_shapes=rng.randint(0, 8)))
        else:
            examples.append(visualmath.slots_example(rng, n_numbers=rng.randint(1, 4), digits=rng.randint(1, 3),
                                                     ops=tuple(rng.sample(["+", "-", "*"], rng.randint(1, 3)))))
    if task in chains.VARIANTS:  # NOTE: after the v2 stream, so v2's tokenizer does not depend on v3's existence
        examples += [visualmath.v3_example(rng, chains.VARIANTS[i % 3], 0.7, 0.5) for i in range(n)]
    texts = []
    for ex in examples:
        prompt = rollout.build_messages(ex["question"])[0]["content"][1]["text"]
        texts.append(f"{SYSTEM_TURN[model_type]}<|im_start|>user\n"
                     f"{prompt}<|im_end|>\n<|im_start|>assistant\n{ex['response']}<|im_end|>\n")
    return texts


def make_tokenizer(vocab_size=None, task="visualmath", model_type="qwen2_5_vl"):
    """Byte-level BPE trained on the task's text, Qwen's special tokens and the family's chat template, wrapped as
    a HF fast tokenizer. vocab_size None: VOCAB_SIZE, or V3_VOCAB_SIZE for a v3 task."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Unlike Qwen's pre-tokenizer we split only digits (one token per digit, as in Qwen, so arithmetic is
    # digit by digit), not words: BPE then merges whole recurring phrases ("</think><answer>", the format
    # instruction) into single tokens, which makes prompts ~3x shorter and CPU training ~3x cheaper.
    # v3 also splits after ". ", so a merge never spans two sentences: each free-form slot's choice then sits on
    # its own token (without it BPE merges e.g. the check and the closing phrase into one 9-way token).
    v3 = task in chains.VARIANTS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(". ", behavior="merged_with_previous")] * v3 + [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab_size = vocab_size or (V3_VOCAB_SIZE if v3 else VOCAB_SIZE)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Special tokens are added to the trainer, so the corpus must not contain them as text to learn from.
    corpus = [t for text in _tokenizer_corpus(task=task, model_type=model_type)
              for t in text.replace("<|im_start|>", "\n").split("<|im_end|>")]
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left", chat_template=family.FAMILIES[model_type][2],
                                   model_max_length=2048)


def make_image_processor(model_type="qwen2_5_vl"):
    """The PIL image processor of the family's patch geometry; bounds 1 .. 256 merged tokens (Qwen2.5-VL: 28 x 28 px
    each, MIN_PIXELS .. MAX_PIXELS; Qwen3-VL: 32 x 32 px, with its mean/std of 0.5 as in the hub's Qwen3-VL)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if model_type == "qwen2_5_vl":
        return Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=VISION["patch_size"],
                                        merge_size=VISION["spatial_merge_size"],
                                        temporal_patch_size=VISION["temporal_patch_size"])
    factor = QWEN3_VISION["patch_size"] * QWEN3_VISION["spatial_merge_size"]  # 32 px per LLM token
    return Qwen2VLImageProcessorPil(min_pixels=factor ** 2, max_pixels=factor ** 2 * 256,
                                    patch_size=QWEN3_VISION["patch_size"], merge_size=QWEN3_VISION["spatial_merge_size"],
                                    temporal_patch_size=QWEN3_VISION["temporal_patch_size"],
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3)


def make_model(tokenizer, seed=0, model_type="qwen2_5_vl", head_dim=None):
    """Random-init tiny model of the family (its FAMILIES class) whose special-token ids match `tokenizer`.
    head_dim (Qwen3-VL only): None = hidden / heads (32); another value decouples the two, as in Qwen3-VL-4B."""
    import transformers
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                pad_token_id=ids("<|endoftext|>"), **TEXT)
    vision = VISION
    if model_type == "qwen3_vl":
        head_dim = head_dim or TEXT["hidden_size"] // TEXT["num_attention_heads"]
        side = head_dim // 2 * 5 // 16  # mRoPE frequencies of the height and width axes: 20 of 64, as Qwen3-VL's
        text.update(head_dim=head_dim, rope_parameters=dict(TEXT["rope_parameters"], mrope_interleaved=True,
                                                            mrope_section=[head_dim // 2 - 2 * side, side, side]))
        vision = QWEN3_VISION
    elif head_dim is not None:
        raise ValueError(f"head_dim {head_dim}: Qwen2.5-VL's is hidden / heads; only a qwen3_vl model takes one")
    model_class = getattr(transformers, family.FAMILIES[model_type][0])
    config = model_class.config_class(
        text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = model_class(config).float()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")], pad_token_id=ids("<|endoftext|>"),
        do_sample=False, max_new_tokens=32)
    return model


def make_random_checkpoint(out_dir, seed=0, task="visualmath", model_type="qwen2_5_vl", head_dim=None):
    """Tokenizer + image processor + random tiny model of the family, saved with save_pretrained into `out_dir`
    (~seconds); head_dim: see make_model."""
    tokenizer = make_tokenizer(task=task, model_type=model_type)
    model = make_model(tokenizer, seed=seed, model_type=model_type, head_dim=head_dim)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    make_image_processor(model_type).save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir

# --------------------------------------------------------------------------------------------------
# SFT warm start
# --------------------------------------------------------------------------------------------------


LESSON_STEPS = (100, 100, 400)  # one number, two numbers, the grid (at 400 the grid's arithmetic has converged)
V3_LESSON_STEPS = (100, 100, 800)  # v3: at 400 the chain's copies still re-read the image (15% differ from the list)
MAX_NEW_TOKENS = {"visualmath": 40, **dict.fromkeys(chains.VARIANTS, 96)}  # held-out answers' budget (v2 ~27, v3 ~53 tokens)


def lessons(slip=0.7, steps=LESSON_STEPS, task="visualmath", pair_slip=0.5):
    """The SFT curriculum: (name, steps, example(rng) -> dict) per lesson (module docstring); the last lesson is
    the grid of `task` (v2, or a v3 chain whose fork variant's pair strategy slips with pair_slip)."""
    grid = (lambda rng: visualmath.grid_example(rng, slip=slip)) if task == "visualmath" else \
        (lambda rng: visualmath.example(task, rng, slip, pair_slip))
    return [("one number", steps[0], lambda rng: visualmath.slots_example(rng, n_numbers=1)),
            ("two numbers", steps[1], lambda rng: visualmath.slots_example(rng)),
            ("grid", steps[2], grid)]


def build_tiny(out_dir=DEFAULT_DIR, seed=0, lr=1e-3, batch_size=32, slip=0.7, steps=None, n_eval=256,
               eval_k=4, task="visualmath", model_type="qwen2_5_vl", head_dim=None):
    """Random checkpoint + SFT warm start (the lessons above), evaluated on held-out grid questions, saved to out_dir.

    Every step draws `batch_size` fresh examples from one seeded rng; the learning rate warms up over the
    first 50 steps, stays constant, and decays linearly to lr / 10 over the last lesson. The build is
    deterministic on one machine for a seed. A finished build replaces out_dir, so out_dir must be new, empty
    or an earlier build (it holds sft_report.json): anything else stops with one line and stays as it was.
    """
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, "sft_report.json")):
        cli.config_error("models/tiny.py", f"--out {out_dir!r} holds files that are not a tiny build (no sft_report.json), "
                                    "and a build replaces the folder: choose a new or empty folder")
    from tqdm import tqdm

    # NOTE: one thread on purpose. On a shared 2-core box, 2 OpenMP threads collapse when a neighbour
    # takes a core (we measured 0.23 s/step with 1 thread vs 2.5 s/step with 2 under load); on a 16-core GPU
    # box 16 threads were no faster than 1. With a GPU the model trains there (the warm start differs in its
    # last bits from a CPU build, as any other machine's does; its skill is set by the teacher, not by them).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp_dir = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    make_random_checkpoint(tmp_dir, seed=seed, task=task, model_type=model_type, head_dim=head_dim)
    tokenizer, image_processor = family.load_processor(tmp_dir)
    model = family.load_model(tmp_dir, attn_implementation=None).to(device)  # None: transformers' default, as always
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(seed)
    steps = steps or (LESSON_STEPS if task == "visualmath" else V3_LESSON_STEPS)
    start, step, loss_ema, plan = time.time(), 0, None, lessons(slip, steps, task)

    def stream():  # the SFT batches in one fixed order, drawn from one seeded rng
        for i, (lesson, n_steps, make_example) in enumerate(plan):
            for j in range(n_steps):
                examples = [make_example(rng) for _ in range(batch_size)]
                yield i, j, lesson, rollout.sft_batch(tokenizer, image_processor, examples)

    bar = tqdm(total=sum(n for _, n, _ in plan), desc="SFT", dynamic_ncols=True)
    # one thread draws and encodes the next batch (rendering, tokenizing: ~50 ms) while this one trains
    with concurrent.futures.ThreadPoolExecutor(1, "sft-data") as pool:
        batches = stream()
        ahead = pool.submit(next, batches, None)
        while (item := ahead.result()) is not None:
            ahead = pool.submit(next, batches, None)
            i, j, lesson, batch = item
            # a short linear warm-up (Adam's first updates are noisy), then constant; the last lesson decays
            # linearly to lr / 10, so the build ends converged rather than wherever the last batches pushed it
            decay = 1.0 - 0.9 * j / plan[i][1] if i == len(plan) - 1 else 1.0
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 50) * decay
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss  # mean cross-entropy over responses
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            bar.update(1)
            bar.set_postfix(lesson=lesson, loss=f"{loss_ema:.3f}")
    bar.close()
    sft_seconds = time.time() - start
    # the figures: the unified evaluator on held-out grid questions (a seed no training stream uses)
    model.eval()
    respond = evaluation.model_responder(model, tokenizer, image_processor, max_new_tokens=MAX_NEW_TOKENS[task],
                                         engine=engine.DecodeEngine(model))  # generate's tokens, faster (engine.py)
    result = evaluation.evaluate(visualmath.make(task, n_eval, seed=seed + 30_000), respond, k=eval_k,
                                 temperature=1.0, seed=seed, show=4)
    report = dict(model_type=model_type, steps=step, lessons={name: n for name, n, _ in plan}, sft_seconds=round(sft_seconds, 1),
                  eval_seconds=round(time.time() - start - sft_seconds, 1), final_loss=round(loss_ema, 4), lr=lr,
                  batch_size=batch_size, slip=slip, seed=seed, task=task, params=sum(p.numel() for p in model.parameters()),
                  held_out={k: v for k, v in result.items() if k != "examples"},
                  samples=[(ex["greedy"]["response"], ex["answer"]) for ex in result["examples"]])
    model.cpu().save_pretrained(tmp_dir)
    with open(os.path.join(tmp_dir, "sft_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)  # a finished build appears at out_dir in one step; never a half one
    torch.set_num_threads(threads)
    return out_dir


def is_built(path):
    """Does `path` hold a finished build? Its report and its weights: experiments keep the reports of their warm
    starts in git and not the weights, so a report alone is no build."""
    return all(os.path.exists(os.path.join(path, f)) for f in ("sft_report.json", "model.safetensors"))


def ensure_tiny_model(path=None):
    """The default checkpoint dir, built (a few minutes on CPU) if it is missing; `path` overrides it."""
    path = path or DEFAULT_DIR
    if not is_built(path):
        print(f"building the tiny default model into {path} (once; a few minutes on CPU)")
        build_tiny(path)
    return path


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def describe(report):
    """The build report in three lines."""
    name = family.FAMILIES[report.get("model_type", "qwen2_5_vl")][1]
    return (f"tiny {name}: {report['params'] / 1e6:.2f}M params, SFT {report['steps']} steps in "
            f"{report['sft_seconds']:.0f}s (lessons {report['lessons']}, teacher slip {report['slip']})\n"
            f"held-out {evaluation.describe(report['held_out'])}, well-formatted {report['held_out']['format']:.1%}\n"
            f"e.g. {report['samples'][0][0]!r} (gold {report['samples'][0][1]})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build the tiny Qwen2.5-VL default model (cached).")
    parser.add_argument("--out", default="", help=f"checkpoint dir (default: {DEFAULT_DIR}, or its tiny-qwen3-vl "
                                                  "sibling for --family qwen3_vl)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")
    parser.add_argument("--seed", type=int, default=0, help="seeds the init, the SFT stream and the evaluation")
    parser.add_argument("--slip", type=float, default=0.7, help="probability that the teacher misreads 1, 3, 5")
    parser.add_argument("--task", default="visualmath", choices=["visualmath", *chains.VARIANTS],
                        help="the grid task of the last lesson (and of the tokenizer's text): v2 or a v3 variant")
    parser.add_argument("--family", default="qwen2_5_vl", choices=list(family.FAMILIES),
                        help="the model family (models/family.py; default: %(default)s, the embedded default)")
    parser.add_argument("--head_dim", type=int, default=None,
                        help="qwen3_vl only: attention head width (default hidden / heads = 32; 64 = Qwen3-VL-4B-like)")
    args = parser.parse_args()
    if args.head_dim is not None and args.family != "qwen3_vl":
        cli.config_error("models/tiny.py", f"--head_dim {args.head_dim}: only --family qwen3_vl states a head_dim")
    args.out = args.out or (DEFAULT_DIR if args.family == "qwen2_5_vl" else
                            os.path.join(os.path.dirname(DEFAULT_DIR), "tiny-qwen3-vl"))
    began = time.time()
    if args.force or not is_built(args.out):
        build_tiny(args.out, seed=args.seed, slip=args.slip, task=args.task, model_type=args.family,
                   head_dim=args.head_dim)
    else:
        print(f"{args.out} exists (use --force to rebuild); its build report:")
    with open(os.path.join(args.out, "sft_report.json")) as f:
        print(describe(json.load(f)))
    print(f"total wall time {time.time() - began:.0f}s -> {args.out}")
