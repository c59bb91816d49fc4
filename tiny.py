"""The embedded default model: a tiny Qwen2.5-VL built offline, then warm-started by SFT on VisualMath.

AT-RL needs a vision-language policy that already *partly* solves its task (RL needs some rewarded
rollouts to learn from) and that runs on a laptop CPU. We build one from nothing, with the same classes
and the same save/load path as the real `Qwen/Qwen2.5-VL-3B-Instruct`:

    tokenizer   byte-level BPE trained here on the task's text, plus Qwen's special tokens
                (<|im_start|>, <|im_end|>, <|vision_start|>, <|image_pad|>, ...) and a Qwen chat template
    model       Qwen2_5_VLForConditionalGeneration, random init, ~1M parameters:
                  vision: patch 14, merge 2 (one LLM token per 28x28 px), depth 2, width 64
                  text:   4 layers x 128, 4 heads, mRoPE sections [4, 6, 6] over head_dim 32
    SFT         next-token cross-entropy on the reference responses only (prompt tokens masked):
                  loss = - sum_{t in response} log p(y_t | image, prompt, y_<t) / #response tokens

The default task (data.make_visualmath defaults): two one-digit numbers in fixed 28x28 slots of a 56x28
image, "What is a + b?", reference "<think>a+b=s</think><answer>s</answer>". Each slot is exactly one
merged vision token, which is what makes reading learnable in minutes on a CPU (an earlier probe saw a
digit at random positions stay at chance for minutes). SFT stops early once held-out greedy accuracy
reaches `target_acc`, so the model is left with partial skill and RL has room to improve it.

Where this departs from a real Qwen2.5-VL:
1. Sizes are tiny and the tokenizer is ours (vocab ~500), so nothing but the task's text encodes compactly.
2. Only full attention in the vision tower (our images fit in one 112-px window anyway).
3. Word embeddings are tied to the LM head (as in Qwen2.5-VL-3B) to save parameters.

Run:  python tiny.py           # builds cache/tiny-qwen2.5-vl (skips if present), prints held-out accuracy
      python tiny.py --force   # rebuild;  ATRL_CACHE=/some/dir python tiny.py  to put the cache elsewhere
Tests: pytest tests/test_tiny.py (uses make_random_checkpoint only: no SFT in tests).
"""

import argparse
import json
import math
import os
import random
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

TEXT = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
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
    """Byte-level BPE (Qwen's pre-tokenizer split: digits are single tokens) wrapped as a HF fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Qwen2's split regex: numbers one digit at a time, so arithmetic works digit by digit.
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
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


def _grade(text, answer):
    """(correct, well_formatted) for one response; uses data's grader when present, else a strict regex."""
    import re

    well_formatted = re.fullmatch(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", text, re.S) is not None
    if hasattr(data, "extract_answer") and hasattr(data, "is_correct"):
        pred = data.extract_answer(text)
        return pred is not None and data.is_correct(pred, answer), well_formatted
    found = re.findall(r"<answer>\s*(-?\d+)\s*</answer>", text)
    return bool(found) and found[-1] == str(answer), well_formatted


@torch.no_grad()
def evaluate(model, tokenizer, image_processor, dataset, batch_size=128, max_new_tokens=24):
    """Greedy held-out accuracy and well-formatted fraction: dict(accuracy, format, samples)."""
    model.eval()
    suppress = rollout.VISION_TOKEN_IDS(tokenizer)
    correct = formatted = 0
    samples = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        enc = rollout.encode_prompts(tokenizer, image_processor, rows["image"], rows["question"])
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, suppress_tokens=suppress)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for text, answer in zip(texts, rows["answer"]):
            ok, fmt = _grade(text, answer)
            correct, formatted = correct + ok, formatted + fmt
            if len(samples) < 4:
                samples.append((text, answer))
    model.train()
    return dict(accuracy=correct / len(dataset), format=formatted / len(dataset), samples=samples)
