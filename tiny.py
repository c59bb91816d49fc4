"""The embedded default model: a tiny Qwen2.5-VL built offline, then warm-started by SFT on VisualMath.

AT-RL needs a vision-language policy that already *partly* solves its task (RL needs some rewarded
rollouts to learn from) and that runs on a laptop CPU. We build one from nothing, with the same classes
and the same save/load path as the real `Qwen/Qwen2.5-VL-3B-Instruct`:

    tokenizer   byte-level BPE trained here on the task's text, plus Qwen's special tokens
                (<|im_start|>, <|im_end|>, <|vision_start|>, <|image_pad|>, ...) and a Qwen chat template
    model       Qwen2_5_VLForConditionalGeneration, random init, 0.96M parameters:
                  vision: patch 14, merge 2 (one LLM token per 28x28 px), depth 2, width 64
                  text:   4 layers x 128 (MLP 256), 4 heads / 2 kv heads, mRoPE sections [4, 6, 6]
                          over head_dim 32, embeddings tied to the LM head
    SFT         next-token cross-entropy on the reference responses only (prompt tokens masked):
                  loss = - sum_{t in response} log p(y_t | image, prompt, y_<t) / #response tokens

The default task (data.make_visualmath defaults): two one-digit numbers in fixed 28x28 slots of a 56x28
image, "What is a + b?", reference "<think>a+b=s</think><answer>s</answer>". Each slot is exactly one
merged vision token, which is what makes reading learnable in minutes on a CPU (an earlier probe saw a
digit at random positions stay at chance for minutes). SFT stops early once held-out greedy accuracy
reaches `target_acc`, so the model is left with partial skill and RL has room to improve it.

Measured (2-core CPU shared with other jobs, load 3-6): `python tiny.py` takes 70 s wall (270 SFT steps)
and prints held-out greedy accuracy 39.2%, 100% well-formatted, all numbers read right 40.6% (n=500).
Seeds 1, 2, 3 give 54.8%, 46.6%, 52.6% (360-480 steps); the build is deterministic for a seed.

Where this departs from a real Qwen2.5-VL:
1. Sizes are tiny and the tokenizer is ours (vocab 512). Its pre-tokenizer splits digits only, not words,
   so recurring phrases become single tokens: a default prompt is 29 tokens, a response 12.
2. Only full attention in the vision tower (our images fit in one 112-px window anyway).
3. Word embeddings are tied to the LM head (as in Qwen2.5-VL-3B) to save parameters.

Run:  python tiny.py           # builds cache/tiny-qwen2.5-vl (skips if present), prints held-out accuracy
      python tiny.py --force   # rebuild;  ATRL_CACHE=/some/dir python tiny.py  to put the cache elsewhere
Tests: pytest tests/test_tiny.py (uses make_random_checkpoint only: no SFT in tests).
"""

import argparse
import json
import os
import random
import re
import shutil
import time

import torch

import data
import rollout

# --------------------------------------------------------------------------------------------------
# Paths and sizes
# --------------------------------------------------------------------------------------------------

_REPO = os.path.dirname(os.path.abspath(__file__))
CACHE_ROOT = os.environ.get("ATRL_CACHE", os.path.join(_REPO, "cache"))
DEFAULT_DIR = os.path.join(CACHE_ROOT, "tiny-qwen2.5-vl")

SPECIAL_TOKENS = [  # Qwen2.5-VL's special tokens, same strings (ids differ: ours start at 0)
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
VOCAB_SIZE = 512  # BPE target size; 256 byte symbols + specials + merges of frequent task words
MIN_PIXELS, MAX_PIXELS = 28 * 28, 28 * 28 * 256  # image processor bounds saved with the checkpoint

TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
            # mRoPE: head_dim 32 -> 16 rotary frequencies, split over (temporal, height, width)
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
VISION = dict(depth=2, hidden_size=64, intermediate_size=256, num_heads=4, in_channels=3, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0, 1],
              out_hidden_size=TEXT["hidden_size"])

# --------------------------------------------------------------------------------------------------
# Tokenizer, image processor, random model
# --------------------------------------------------------------------------------------------------


def _tokenizer_corpus(n=400, seed=0):
    """Texts the tokenizer is trained on: chat-formatted prompts and responses over many task knobs."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        knobs = dict(n_numbers=rng.randint(1, 4), digits=rng.randint(1, 3),
                     ops=tuple(rng.sample(["+", "-", "*"], rng.randint(1, 3))))
        ex = data.visualmath_example(rng, **knobs)
        prompt = rollout.build_messages(ex["question"])[0]["content"][1]["text"]
        texts.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                     f"{prompt}<|im_end|>\n<|im_start|>assistant\n{ex['response']}<|im_end|>\n")
    return texts


def make_tokenizer(vocab_size=VOCAB_SIZE):
    """Byte-level BPE trained on the task's text, Qwen's special tokens, wrapped as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Unlike Qwen's pre-tokenizer we split only digits (one token per digit, as in Qwen, so arithmetic is
    # digit by digit), not words: BPE then merges whole recurring phrases ("</think><answer>", the format
    # instruction) into single tokens, which makes prompts ~3x shorter and CPU training ~3x cheaper.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Special tokens are added to the trainer, so the corpus must not contain them as text to learn from.
    corpus = [t for text in _tokenizer_corpus() for t in text.replace("<|im_start|>", "\n").split("<|im_end|>")]
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left", chat_template=rollout.QWEN_CHAT_TEMPLATE,
                                   model_max_length=2048)


def make_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=VISION["patch_size"],
                                    merge_size=VISION["spatial_merge_size"],
                                    temporal_patch_size=VISION["temporal_patch_size"])


def make_model(tokenizer, seed=0):
    """Random-init tiny Qwen2_5_VLForConditionalGeneration whose special-token ids match `tokenizer`."""
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), bos_token_id=ids("<|endoftext|>"),
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), **TEXT),
        vision_config=VISION, image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")], pad_token_id=ids("<|endoftext|>"),
        do_sample=False, max_new_tokens=32)
    return model


def make_random_checkpoint(out_dir, seed=0):
    """Tokenizer + image processor + random tiny model, saved with save_pretrained into `out_dir` (~seconds)."""
    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    make_image_processor().save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir

# --------------------------------------------------------------------------------------------------
# SFT warm start
# --------------------------------------------------------------------------------------------------


def sft_batch(tokenizer, image_processor, examples):
    """Prompt (left-padded, from rollout.encode_prompts) + reference response + <|im_end|> (right-padded).

    Returns the encode_prompts dict with input_ids/attention_mask/mm_token_type_ids extended to (B, P + R)
    and labels (B, P + R): the response token ids, -100 on prompt and padding (loss on the response only).
    """
    enc = rollout.encode_prompts(tokenizer, image_processor, [e["image"] for e in examples],
                                 [e["question"] for e in examples])
    responses = [tokenizer(e["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
                 for e in examples]
    B, R = len(responses), max(len(r) for r in responses)
    resp_ids = torch.full((B, R), tokenizer.pad_token_id, dtype=torch.long)  # (B, R)
    resp_mask = torch.zeros((B, R), dtype=torch.long)  # (B, R)
    for b, r in enumerate(responses):
        resp_ids[b, :len(r)] = torch.tensor(r)
        resp_mask[b, :len(r)] = 1
    labels = torch.cat([torch.full_like(enc["input_ids"], -100), resp_ids.masked_fill(resp_mask == 0, -100)], 1)
    enc["input_ids"] = torch.cat([enc["input_ids"], resp_ids], 1)  # (B, P + R)
    enc["attention_mask"] = torch.cat([enc["attention_mask"], resp_mask], 1)  # (B, P + R)
    enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(resp_ids)], 1)
    enc["labels"] = labels  # (B, P + R); the model shifts labels by one internally
    return enc


def _grade(text, answer, perception):
    """(correct, well_formatted, read) for one response.

    correct: data.compute_reward's accuracy (extract_answer + is_correct); well_formatted: its format part
    (exactly <think>...</think><answer>...</answer>); read: the numbers before the last '=' inside <think> are the
    perception values, in any order (the model read the image right, whatever its arithmetic).

    >>> _grade("<think>3+4=7</think><answer>7</answer>", "7", ["3", "4"])
    (True, True, True)
    >>> _grade("<think>3+5=8</think><answer>8</answer>", "7", ["3", "4"])
    (False, True, False)
    >>> _grade("<think>4+3=7</think><answer>7", "7", ["3", "4"])   # unclosed tag: badly formatted
    (True, False, True)
    """
    parts = data.compute_reward(text, answer)  # the RL reward's own grader
    correct, well_formatted = parts["accuracy"] == 1.0, parts["format"] == 1.0
    think = re.search(r"<think>(.*?)</think>", text, re.S)
    # sorted: for a + b, writing "4+3" for perception [3, 4] is a right reading (order is not asked)
    read = think is not None and sorted(re.findall(r"\d+", think.group(1).rpartition("=")[0])) == sorted(perception)
    return correct, well_formatted, read


@torch.no_grad()
def evaluate(model, tokenizer, image_processor, dataset, batch_size=128, max_new_tokens=24):
    """Greedy decoding on `dataset`: dict(accuracy, format, read, samples) -- fractions of examples."""
    model.eval()
    totals = [0, 0, 0]  # correct, well formatted, read right
    samples = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        enc = rollout.encode_prompts(tokenizer, image_processor, rows["image"], rows["question"])
        response, mask, _ = rollout.generate(model, tokenizer, enc, max_new_tokens, temperature=0)  # greedy
        texts = [tokenizer.decode(ids[m], skip_special_tokens=True) for ids, m in zip(response, mask)]
        for text, answer, perception in zip(texts, rows["answer"], rows["perception"]):
            totals = [t + g for t, g in zip(totals, _grade(text, answer, perception))]
            if len(samples) < 4:
                samples.append((text, answer))
    model.train()
    n = len(dataset)
    return dict(accuracy=totals[0] / n, format=totals[1] / n, read=totals[2] / n, samples=samples)


def build_tiny(out_dir=DEFAULT_DIR, sft_steps=2000, seed=0, lr=1e-3, batch_size=32, target_acc=0.4,
               eval_every=15, time_budget_s=480, n_eval=500, task=None, log=print):
    """Random checkpoint + SFT warm start on VisualMath reference responses, saved to `out_dir`.

    Every step draws `batch_size` fresh examples (seeded rng; `task` = make_visualmath knobs). Every
    `eval_every` steps a 128-example held-out probe is decoded greedily; SFT stops at the first check with
    probe accuracy >= target_acc and >= 95% well-formatted answers (partial skill on purpose: RL needs room
    to improve), or after `sft_steps` steps / `time_budget_s` seconds. On the default task reading is
    learned abruptly (held-out accuracy ~0.1 -> ~0.8 within ~50-100 steps, after 250-450 steps depending
    on the seed; seed 0 went from 39% at step 270 to 52% at step 275), hence the frequent checks. The final figures (n_eval examples, another seed) are printed and saved in sft_report.json.
    """
    from tqdm import tqdm
    from transformers import Qwen2_5_VLForConditionalGeneration

    task = dict(task or {})
    # NOTE: one thread on purpose. On a shared 2-core box, 2 OpenMP threads collapse when a neighbour
    # takes a core (we measured 0.23 s/step with 1 thread vs 2.5 s/step with 2 under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp_dir = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    make_random_checkpoint(tmp_dir, seed=seed)
    tokenizer, image_processor = rollout.load_processor(tmp_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(seed)
    probe = data.make_visualmath(128, seed=seed + 10_000, **task)  # early-stopping probe
    held_out = data.make_visualmath(n_eval, seed=seed + 20_000, **task)  # the reported figures

    start, loss_ema, probe_result = time.time(), None, {}
    bar = tqdm(range(sft_steps), desc="SFT", dynamic_ncols=True)
    for step in bar:
        examples = [data.visualmath_example(rng, **task) for _ in range(batch_size)]
        batch = sft_batch(tokenizer, image_processor, examples)
        warmup = min(1.0, (step + 1) / 50)  # short linear warm-up: Adam's first updates are noisy
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup
        loss = model(**batch).loss  # mean cross-entropy over response tokens (labels -100 elsewhere)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        out_of_time = time.time() - start > time_budget_s
        if (step + 1) % eval_every == 0 or out_of_time:
            probe_result = evaluate(model, tokenizer, image_processor, probe)
            bar.set_postfix(loss=f"{loss_ema:.3f}", probe_acc=f"{probe_result['accuracy']:.2f}")
            if probe_result["accuracy"] >= target_acc and probe_result["format"] >= 0.95:
                break
        if out_of_time:
            log(f"SFT stopped by the time budget ({time_budget_s}s) before reaching target_acc={target_acc}")
            break
    bar.close()
    sft_seconds = time.time() - start
    result = evaluate(model, tokenizer, image_processor, held_out)
    report = dict(steps=step + 1, sft_seconds=round(sft_seconds, 1), final_loss=round(loss_ema, 4), lr=lr,
                  batch_size=batch_size, target_acc=target_acc, probe_accuracy=probe_result.get("accuracy"),
                  held_out_accuracy=result["accuracy"], held_out_format=result["format"],
                  held_out_read=result["read"], n_eval=n_eval, task=task, seed=seed,
                  params=sum(p.numel() for p in model.parameters()), samples=result["samples"])
    model.save_pretrained(tmp_dir)
    with open(os.path.join(tmp_dir, "sft_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)  # a finished build appears at out_dir in one step; never a half one
    torch.set_num_threads(threads)
    return out_dir


def ensure_tiny_model(path=None):
    """The default checkpoint dir, built (a few minutes on CPU) if it is missing; `path` overrides it."""
    path = path or DEFAULT_DIR
    if not os.path.exists(os.path.join(path, "sft_report.json")):
        print(f"building the tiny default model into {path} (once; a few minutes on CPU)")
        build_tiny(path)
    return path


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build the tiny Qwen2.5-VL default model (cached).")
    parser.add_argument("--out", default=DEFAULT_DIR, help="checkpoint dir (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target_acc", type=float, default=0.4, help="stop SFT at this probe accuracy")
    args = parser.parse_args()
    began = time.time()
    if args.force or not os.path.exists(os.path.join(args.out, "sft_report.json")):
        build_tiny(args.out, seed=args.seed, target_acc=args.target_acc)
    else:
        print(f"{args.out} exists (use --force to rebuild); its build report:")
    with open(os.path.join(args.out, "sft_report.json")) as f:
        report = json.load(f)
    print(f"tiny Qwen2.5-VL: {report['params'] / 1e6:.2f}M params, SFT {report['steps']} steps in "
          f"{report['sft_seconds']:.0f}s (lr {report['lr']}, batch {report['batch_size']})")
    print(f"held-out greedy accuracy {report['held_out_accuracy']:.1%}, well-formatted "
          f"{report['held_out_format']:.1%}, all numbers read right {report['held_out_read']:.1%} "
          f"(n={report['n_eval']})")
    print(f"e.g. {report['samples'][0][0]!r} (gold {report['samples'][0][1]})")
    print(f"total wall time {time.time() - began:.0f}s -> {args.out}")
