"""Rollout for AT-RL: turn (image, question) prompts into model inputs, then sample G responses per prompt.

This file has two sections. **Encoding** (below) builds exactly the tensors the forward and `generate` of
Qwen2.5-VL and Qwen3-VL need (models/family.py); **Sampling** draws G responses per prompt, rewards them and pads everything into one batch.

Sampling is exact Gumbel-max: with u ~ U(0,1) per vocabulary entry,
    argmax_v (logits_v / temperature - log(-log u_v))   is a sample of softmax(logits / temperature),
and u comes from a counter-based hash of (rollout key, response position, v) instead of an RNG stream, so a
rollout's tokens depend on its key alone: the same run gives the same rollouts on 1 GPU or 8, with any
micro-batching (tests/test_train.py compares 1 and 2 processes parameter by parameter on this basis).

Encoding, for a batch of B prompts (f = patch_size x merge_size px: one merged LLM token, 28 for Qwen2.5-VL's
14-px patches, 32 for Qwen3-VL's 16-px ones; p = patch_size; both read from the image processor):

    image  --prepare_image-->  RGB, H and W multiples of f, min_pixels <= H*W <= max_pixels
           --image processor-->  pixel_values (sum_b h_b*w_b, C*2*p*p), image_grid_thw (B, 3) = [1, h_b, w_b]
    text   --the family's chat template-->  "...<|vision_start|><|image_pad|><|vision_end|>question + format..."
           --expand-->  one <|image_pad|> per merged patch: N_b = h_b * w_b / merge_size**2
           --tokenize, LEFT-pad-->  input_ids (B, P), attention_mask (B, P), mm_token_type_ids (B, P)

Where this departs from the stock `Qwen2_5_VLProcessor` / `Qwen3VLProcessor` (tests/test_processor_oracle.py):
1. We use the image processor and the tokenizer directly (no `AutoProcessor`), so the same code serves a
   hub checkpoint and our own tiny checkpoint (models/tiny.py), and no torchvision is needed: the image processor
   is transformers' PIL backend (`Qwen2VLImageProcessorPil`).
2. Images are resized by us (`prepare_image`), with explicit min/max pixel bounds, and odd inputs are made
   valid first: grayscale/RGBA/palette -> RGB on white, tiny images upscaled to at least one f x f merged
   patch, extreme aspect ratios padded to <= 200:1, huge images shrunk under max_pixels.
3. Prompts are LEFT-padded: `generate` appends at the right, so every row's last prompt token must sit in
   the last column.

Traps this file guards against (tests/test_encoding.py checks each):
- `mm_token_type_ids` (1 at image tokens, 0 elsewhere) must reach forward AND generate. Without it
  transformers 5.x cannot build the 3-D mRoPE positions (temporal, height, width) of the image tokens and
  silently falls back to 1-D positions -- a model trained with 3-D positions then emits garbage.
- The number of <|image_pad|> tokens must equal image_grid_thw.prod() // merge_size**2 per image, or the
  model's placeholder check fails.
- Vision special tokens must be suppressed while sampling (`VISION_TOKEN_IDS`): a sampled <|image_pad|>
  would be mistaken for an image slot when the response is re-encoded for the training forward.

References: Qwen2.5-VL tech report (arXiv 2502.13923) §2.1 (dynamic resolution, MRoPE);
transformers models/qwen2_5_vl/modeling_qwen2_5_vl.py `get_rope_index`, models/qwen2_vl/
processing_qwen2_vl.py (the stock processor this replaces). Run the checks: `pytest tests/test_encoding.py`.
"""

import contextlib
import math

import torch
from PIL import Image

# defined once for both decoders: the counter-keyed Gumbel noise, and the G copies of a prompt generate prefills
from engine import gumbel_scores, pixel_rows, repeat_groups

# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------

# The instruction appended to every question; the reward (grading.compute_reward) grades this format.
FORMAT_INSTRUCTION = (
    "Think step by step inside <think></think>, then give the final answer inside <answer></answer>."
)

IMAGE_TOKEN = "<|image_pad|>"
# Every token that only makes sense inside a prompt's image/video slot.
_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _target_size(height, width, factor, min_pixels, max_pixels):
    """(H, W) multiples of `factor`, aspect ratio kept as far as possible, min_pixels <= H*W <= max_pixels.

    Same rule as transformers' `smart_resize`, but never returns 0 (tiny inputs) and clamps to one factor.

    >>> _target_size(28, 56, 28, 28 * 28, 28 * 28 * 64)   # already valid: unchanged
    (28, 56)
    >>> _target_size(1, 1, 28, 28 * 28, 28 * 28 * 64)     # 1x1 px -> one merged patch
    (28, 28)
    >>> _target_size(4000, 3000, 28, 28 * 28, 28 * 28 * 64)  # huge -> under max_pixels, same aspect
    (252, 168)
    """
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = max(factor, math.ceil(height * beta / factor) * factor)
        w = max(factor, math.ceil(width * beta / factor) * factor)
    return h, w


def prepare_image(img, min_pixels=None, max_pixels=None, factor=28):
    """Any PIL image -> RGB whose sides are multiples of `factor` (patch x merge: encode_prompts passes the image
    processor's; the default is Qwen2.5-VL's 14 x 2) within the pixel bounds (None: one merged token, factor^2,
    and 1280 of them, Qwen's usual cap).

    Modes: palette / grayscale / 16-bit / float / CMYK -> RGB; transparency is composited onto white (a
    transparent PNG would otherwise turn black). Extreme aspect ratios (> 200:1, which Qwen's resize
    rejects) are padded with white first. Already-valid images are returned unchanged (pixel-exact).

    >>> prepare_image(Image.new("LA", (3, 700))).size    # tiny, 233:1 tall, grayscale+alpha
    (28, 700)
    """
    min_pixels, max_pixels = min_pixels or factor * factor, max_pixels or factor * factor * 1280
    if min_pixels < factor * factor or max_pixels < min_pixels:
        raise ValueError(f"need {factor * factor} <= min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    if img.mode == "P":  # palette images may carry transparency in img.info
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode in ("I", "I;16", "F"):  # 16-bit / float grayscale: rescale to 0..255 before 8-bit
        lo, hi = img.getextrema()
        img = img.point(lambda v: (v - lo) * 255.0 / max(hi - lo, 1)).convert("L").convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    if max(width, height) > 199 * min(width, height):  # pad the short side to a 199:1 ratio
        padded = Image.new("RGB", (max(width, math.ceil(height / 199)), max(height, math.ceil(width / 199))),
                           (255, 255, 255))
        padded.paste(img, (0, 0))
        img, (width, height) = padded, padded.size
    h, w = _target_size(height, width, factor, min_pixels, max_pixels)
    if (h, w) != (height, width):
        img = img.resize((w, h), Image.BICUBIC)
    return img


def build_messages(question):
    """One user turn: the image, then the question and the answer-format instruction.

    >>> build_messages("What is 1+1?")[0]["content"][1]["text"][:12]
    'What is 1+1?'
    """
    return [{"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": f"{question}\n{FORMAT_INSTRUCTION}"}]}]


def VISION_TOKEN_IDS(tokenizer):
    """Ids of the vision special tokens this tokenizer knows (to suppress while sampling)."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in _VISION_TOKENS if t in vocab)


def encode_prompts(tokenizer, image_processor, images, questions, min_pixels=None, max_pixels=None):
    """B (image, question) pairs -> the inputs of the model's forward/generate, prompts LEFT-padded.

    min_pixels/max_pixels default to the image processor's own bounds (size.shortest_edge/longest_edge).
    Returns a dict of tensors:
        input_ids (B, P), attention_mask (B, P), mm_token_type_ids (B, P) (1 = image token),
        pixel_values (sum_b h_b*w_b, C*T*p*p) float32, image_grid_thw (B, 3) long.
    pixel_values rows of image b are rows [offset_b, offset_b + h_b*w_b) with offsets = cumsum of the
    grid products, so per-sample slicing is by image_grid_thw.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions: need one image per question")
    size = image_processor.size
    min_pixels = min_pixels or size["shortest_edge"]
    max_pixels = max_pixels or size["longest_edge"]
    merge = image_processor.merge_size
    factor = image_processor.patch_size * merge
    rgb = [prepare_image(im, min_pixels, max_pixels, factor) for im in images]
    # do_resize=False: prepare_image already produced valid sizes, so the processor only normalises + patchifies.
    vision = image_processor(images=rgb, do_resize=False, return_tensors="pt")
    grid = vision["image_grid_thw"]  # (B, 3)

    if tokenizer.chat_template is None:  # NOTE: no fallback: another family's template is a prompt never trained on
        raise ValueError("the tokenizer has no chat template: load it with models.family.load_processor, which gives "
                         "it the checkpoint's or its family's")
    texts = []
    for question, thw in zip(questions, grid):
        text = tokenizer.apply_chat_template(build_messages(question), tokenize=False, add_generation_prompt=True)
        if text.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"chat template produced {text.count(IMAGE_TOKEN)} {IMAGE_TOKEN} tokens, expected 1")
        n_image_tokens = int(thw.prod()) // merge**2  # one LLM token per merge x merge patch block
        texts.append(text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens))

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, P)
    for b, r in enumerate(rows):  # left padding: row b occupies the last len(r) columns
        input_ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attention_mask[b, width - len(r):] = 1
    mm_token_type_ids = (input_ids == image_id).long() * attention_mask  # (B, P) 1 = image, 0 = text/pad
    return dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids,
                pixel_values=vision["pixel_values"], image_grid_thw=grid)


def sft_batch(tokenizer, image_processor, examples):
    """Prompt (left-padded, from encode_prompts) + reference response + <|im_end|> (right-padded): models/tiny.py's SFT
    batch, and the teacher-forced responses experiments/report.py and the experiments probe.

    Returns the encode_prompts dict with input_ids/attention_mask/mm_token_type_ids extended to (B, P + R)
    and labels (B, P + R): the response token ids, -100 on prompt and padding (loss on the response only).
    """
    enc = encode_prompts(tokenizer, image_processor, [e["image"] for e in examples], [e["question"] for e in examples])
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


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
#
# A rollout batch is a dict. For B = P_prompts * G rollouts, S = P + T (prompt columns + response columns):
#   input_ids, attention_mask, mm_token_type_ids, full_response_mask   (B, S)  prompt LEFT-, response RIGHT-padded
#   pixel_values (sum_b patches_b, D), image_grid_thw (B, 3)             one image per rollout
#   response_mask (B, T) bool (tokens up to and including EOS), truncated (B,) bool (no EOS within budget)
#   keys (B,) int64: each rollout's sampling key -- its identity, reused to seed its clustering
#   prompt_len P (int), texts / answers / choices (lists), and after `score`: rewards, accuracy, format (B,)
# Rollout i belongs to group i // G: the G samples of one prompt are consecutive and never split.

_TENSOR_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "full_response_mask", "response_mask",
                "truncated", "image_grid_thw", "keys", "rewards", "accuracy", "format", "lucky")
_LIST_KEYS = ("texts", "answers", "choices", "precisions", "perceptions")


def select(batch, index):
    """The sub-batch of rollouts `index` (a list of ints), pixel rows included."""
    out = {k: batch[k][index] for k in _TENSOR_KEYS if k in batch}
    out.update({k: [batch[k][b] for b in index] for k in _LIST_KEYS if k in batch})
    out["pixel_values"] = pixel_rows(batch, index)
    out["prompt_len"] = batch["prompt_len"]
    return out


def slice_batch(batch, start, stop):
    """Rollouts [start, stop): a micro-batch for one forward/backward."""
    return select(batch, list(range(start, min(stop, len(batch["input_ids"])))))


def token_logprobs(net, batch, prompt_len, autocast=None):
    """Log pi(y_t) in fp32 for every response token, and the per-token entropy (no grad), both (B, T).

    Response token t sits at column P + t and is predicted by the logits at P + t - 1, so only the last
    T + 1 positions are projected onto the vocabulary (logits_to_keep). `autocast` wraps the forward only:
    log-probs are always computed in fp32.
    """
    T = batch["input_ids"].shape[1] - prompt_len
    with autocast or contextlib.nullcontext():
        out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                  mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False, logits_to_keep=T + 1)
    logp_all = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)                   # (B, T, vocab)
    logp = logp_all.gather(-1, batch["input_ids"][:, prompt_len:, None]).squeeze(-1)   # (B, T)
    with torch.no_grad():  # logged only: no graph for the (B, T, vocab) products
        entropy = -(logp_all.exp() * logp_all).sum(-1)                                  # (B, T)
    return logp, entropy


def blacken_patches(batch, image_processor, p=0.5):
    """A copy of a (micro-)batch whose images have each patch blackened with probability p, seeded by the
    rollout's key: VPPO's perturbation (arXiv 2510.09285, their perc_utils.random_patch_blackening, 14-px
    patches, p = 0.5) for measuring how much a token depends on the image.

    pixel_values rows are already patches (one row = one patch_size x patch_size patch of one image, its
    temporal copies included, channel-major), so blackening a patch = replacing its row by the normalised
    value of a black pixel, (0 - mean) / std per channel. Ours are the model's own (resized) patches, of the
    family's size (14 px Qwen2.5-VL, 16 px Qwen3-VL: read from the image processor); VPPO blackens a 14-px grid
    of the original image before resizing -- the same thing for Qwen2.5-VL when no resize happens.
    """
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32)
    per_channel = image_processor.temporal_patch_size * image_processor.patch_size ** 2
    pixels = batch["pixel_values"]                                                       # (sum patches, D)
    black = (-mean / std).repeat_interleave(per_channel).to(pixels)                      # (D,)
    rows = batch["image_grid_thw"].prod(-1).tolist()
    drop = torch.cat([torch.rand(n, generator=torch.Generator().manual_seed(int(key))) < p
                      for n, key in zip(rows, batch["keys"].tolist())])                  # (sum patches,)
    return dict(batch, pixel_values=torch.where(drop[:, None].to(pixels.device), black, pixels))


def to_device(batch, device):
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _repad(batch, prompt_len, response_len, pad_id):
    """Re-pad a batch to P' >= P prompt columns (on the left) and T' >= T response columns (on the right)."""
    P, S = batch["prompt_len"], batch["input_ids"].shape[1]
    left, right = prompt_len - P, response_len - (S - P)
    out = dict(batch, prompt_len=prompt_len)
    for k, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0), ("full_response_mask", 0)):
        out[k] = torch.nn.functional.pad(batch[k], (left, right), value=fill)
    out["response_mask"] = torch.nn.functional.pad(batch["response_mask"], (0, right), value=False)
    return out


def concat(a, b, pad_id=0):
    """Two rollout batches -> one (re-padded to common prompt and response widths)."""
    P = max(a["prompt_len"], b["prompt_len"])
    T = max(a["input_ids"].shape[1] - a["prompt_len"], b["input_ids"].shape[1] - b["prompt_len"])
    a, b = _repad(a, P, T, pad_id), _repad(b, P, T, pad_id)
    out = {k: torch.cat([a[k], b[k]]) for k in _TENSOR_KEYS if k in a}
    out.update({k: a[k] + b[k] for k in _LIST_KEYS if k in a})
    out["pixel_values"] = torch.cat([a["pixel_values"], b["pixel_values"]])
    out["prompt_len"] = P
    return out


class GumbelSampler:
    """A logits processor that turns greedy decoding into exact sampling (the Gumbel-max trick):
    argmax(logits / temperature + g), g = -log(-log u), is a sample of softmax(logits / temperature).
    With counter-based u (engine.hash_uniform) every rollout is reproducible from (seed, prompt, sample index) alone.
    top_p < 1 first masks the tail outside the nucleus (Holtzman et al. 2020)."""

    def __init__(self, keys, prompt_width, temperature=1.0, top_p=1.0):
        self.keys, self.prompt_width, self.temperature, self.top_p = keys, prompt_width, temperature, top_p

    def __call__(self, input_ids, scores):
        # NOTE: the counter is the response position, not input_ids.shape[1]: that includes the left padding,
        # which depends on the other prompts of the batch
        return gumbel_scores(scores, self.keys, input_ids.shape[1] - self.prompt_width, self.temperature, self.top_p)


def _responses(generated, eos, pad_id, vision):
    """Generated tokens (B, n) -> (response (B, T), response_mask (B, T) bool up to and incl. the first EOS,
    truncated (B,) bool: no EOS), T = the longest response. Both decoders' tokens go through here; T is the
    width generate returns (it stops when the last row ends), so a decoder that ran on is cut to it."""
    is_eos = torch.isin(generated, torch.tensor(eos))
    n = generated.shape[1]
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((len(generated),), n))  # (B,)
    response_mask = torch.arange(n)[None, :] <= first_eos[:, None]                             # (B, n)
    T = int(response_mask.sum(1).max())
    response = generated[:, :T].masked_fill(~response_mask[:, :T], pad_id)                     # (B, T)
    leaked = torch.isin(response, torch.tensor(vision)) & response_mask[:, :T]
    if leaked.any():  # never let an image placeholder reach the training forward: it would shift image slots
        b = int(leaked.any(1).nonzero()[0])
        raise RuntimeError(f"rollout {b} generated a vision special token {response[b][leaked[b]].tolist()} "
                           "despite suppression; check the tokenizer's special tokens")
    return response, response_mask[:, :T], ~is_eos.any(1)


@torch.no_grad()
def generate(model, tokenizer, enc, max_new_tokens, temperature=1.0, top_p=1.0, keys=None, synced=False,
             group_size=1, engine=None):
    """G = group_size responses to each left-padded prompt of `enc` (encode_prompts' dict, not repeated: rows
    p*G .. p*G + G - 1 answer prompt p), sampled (temperature > 0; one int64 key per row) or greedy (temperature 0).

    engine: an engine.DecodeEngine decodes them (prefill once per prompt, static KV cache, CUDA graphs); None =
    transformers' `generate` on G copies of each prompt: the reference, which the engine equals token for token
    (tests/test_engine.py).
    Returns (response_ids (B, T), response_mask (B, T) bool up to and incl. EOS, truncated (B,) bool).
    NOTE: we pass a fresh GenerationConfig: a hub checkpoint's generation_config.json (Qwen2.5-VL-Instruct
    ships top_k=1, top_p=0.001, repetition_penalty=1.05) would otherwise silently change the sampling
    distribution, and PPO's ratio assumes samples come from pi itself.
    synced=True (FSDP, generate only) keeps every rank stepping until all are done: each forward is a collective
    there. The engine needs no such thing: it decodes from a plain copy of the weights.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    vision = VISION_TOKEN_IDS(tokenizer)  # trap: a sampled <|image_pad|> would become an image slot
    rows = len(enc["input_ids"]) * group_size
    if temperature > 0 and (keys is None or len(keys) != rows):
        raise ValueError("sampling needs one integer key per rollout row (got "
                         f"{None if keys is None else len(keys)} for {rows} rows)")
    if engine is not None:
        generated = engine.generate(enc, group_size, max_new_tokens, temperature, top_p,
                                    keys if temperature > 0 else None, eos, tokenizer.pad_token_id, vision)
        return _responses(generated, eos, tokenizer.pad_token_id, vision)
    enc = repeat_groups(enc, group_size)
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id, suppress_tokens=vision)
    processors = LogitsProcessorList()
    if temperature > 0:
        processors.append(GumbelSampler(torch.as_tensor(keys, dtype=torch.int64), enc["input_ids"].shape[1],
                                        temperature, top_p))
    device = next(model.parameters()).device
    out = model.generate(**{k: v.to(device) for k, v in enc.items()}, generation_config=config,
                         logits_processor=processors, synced_gpus=synced)
    return _responses(out[:, enc["input_ids"].shape[1]:].cpu(), eos, tokenizer.pad_token_id, vision)


def sample_groups(model, tokenizer, image_processor, rows, group_size, prompt_keys, max_new_tokens=64,
                  temperature=1.0, top_p=1.0, min_pixels=None, max_pixels=None, synced=False, engine=None):
    """P dataset rows -> a rollout batch of P*G sampled responses (see the layout above).

    prompt_keys: one int per row; sample j of prompt p draws its noise from key prompt_keys[p] * G + j, so
    the same (seed, step, global prompt index) gives the same responses on 1 GPU or 8.
    engine: an engine.DecodeEngine, or None for transformers' generate (see `generate`).
    """
    from tasks import benchmarks

    enc = encode_prompts(tokenizer, image_processor, [r["image"] for r in rows],
                         [benchmarks.format_question(r) for r in rows], min_pixels, max_pixels)
    keys = [int(k) * group_size + j for k in prompt_keys for j in range(group_size)]
    response, response_mask, truncated = generate(model, tokenizer, enc, max_new_tokens, temperature, top_p, keys,
                                                  synced, group_size, engine)
    enc = repeat_groups(enc, group_size)
    B, P = enc["input_ids"].shape
    return {
        "input_ids": torch.cat([enc["input_ids"], response], 1),                                       # (B, S)
        "attention_mask": torch.cat([enc["attention_mask"], response_mask.long()], 1),              # (B, S)
        "mm_token_type_ids": torch.cat([enc["mm_token_type_ids"], torch.zeros_like(response)], 1),  # (B, S)
        "full_response_mask": torch.cat([torch.zeros(B, P, dtype=torch.bool), response_mask], 1),   # (B, S)
        "response_mask": response_mask, "truncated": truncated, "prompt_len": P, "keys": torch.tensor(keys),
        "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"],
        "texts": [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(response, response_mask)],
        "answers": [r["answer"] for r in rows for _ in range(group_size)],
        "choices": [list(r.get("choices") or []) for r in rows for _ in range(group_size)],
        "precisions": [r.get("precision") for r in rows for _ in range(group_size)],
        "perceptions": [list(r.get("perception") or []) for r in rows for _ in range(group_size)],
    }


def score(batch, reward="answer"):
    """Add the verifiable reward and its parts to a rollout batch.

    reward="answer": grading.compute_reward, 0.9 * accuracy + 0.1 * format (the task's reward).
    reward="starts_with": +1 if the response's first character is a digit, else -1 (accuracy: 1 or 0; format 0):
    a reward so simple that any working policy-gradient loop must learn it (tests/test_rl_sanity.py). Win/lose
    rewards of +-1 make a missing baseline fatal: without one, every losing rollout pushes its own first token
    down, which spreads probability over all 512 tokens instead of onto the ten digits.
    """
    from tasks import grading
    from tasks import visualmath

    lucky = [False] * len(batch["texts"])
    if reward == "answer":
        parts = [grading.compute_reward(t, a, c, precision=p)
                 for t, a, c, p in zip(batch["texts"], batch["answers"], batch["choices"], batch["precisions"])]
        # a right answer from a wrong reading is a lucky guess (VisualMath rows only: they know their perception)
        lucky = [p["accuracy"] == 1 and bool(seen) and not visualmath.read_right(t, seen)
                 for p, t, seen in zip(parts, batch["texts"], batch["perceptions"])]
    elif reward == "starts_with":
        parts = [{"reward": 2.0 * t[:1].isdigit() - 1.0, "accuracy": float(t[:1].isdigit()), "format": 0.0}
                 for t in batch["texts"]]
    else:
        raise ValueError(f"reward={reward!r}: use 'answer' or 'starts_with'")
    for key, name in (("rewards", "reward"), ("accuracy", "accuracy"), ("format", "format")):
        batch[key] = torch.tensor([p[name] for p in parts], dtype=torch.float32)               # (B,)
    batch["lucky"] = torch.tensor(lucky, dtype=torch.float32)                                   # (B,)
    return batch


def count_flat_groups(rewards, group_size):
    """Groups whose G rewards are all equal: their advantages are 0, they teach nothing (DAPO §3.2)."""
    g = rewards.view(-1, group_size)
    return int((g.max(1).values == g.min(1).values).sum())


def drop_flat_groups(batch, group_size):
    """(batch without all-equal groups, number of groups dropped)."""
    g = batch["rewards"].view(-1, group_size)
    keep = (g.max(1).values != g.min(1).values).nonzero().flatten().tolist()
    n_flat = len(g) - len(keep)
    return select(batch, [k * group_size + j for k in keep for j in range(group_size)]), n_flat
