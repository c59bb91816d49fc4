"""Prompt/image encoding (rollout.py §Encoding) on a random tiny checkpoint of each family (Qwen2.5-VL: 14-px patches,
28-px tokens, a system turn; Qwen3-VL: 16-px patches, 32-px tokens, none -- every size below is taken from the
checkpoint's image processor): shapes, padding, odd images, and the oracle that matters most: log-probs recorded
while sampling equal those of a training forward."""

import doctest

import pytest
import torch
from PIL import Image

import rollout
from conftest import rounding
from models import family, tiny
from tasks import visualmath


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def checkpoint(request, tiny_checkpoint):  # tiny_checkpoint: conftest.py
    return tiny_checkpoint(request.param)


@pytest.fixture(scope="module")
def processor(checkpoint):
    return family.load_processor(checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint):
    return family.load_model(checkpoint, attn_implementation=None).eval()  # None: transformers' default attention


@pytest.fixture(scope="module")
def model64(checkpoint):
    """The same model in float64, for the oracles that compare two ways of computing one forward (with the
    float64_norms fixture: float64 throughout). In float32 they agree only to float32 rounding through the whole
    network, a bound too wide to tell from the bug they guard against (~3e-3); in float64 it is 1e-12."""
    return family.load_model(checkpoint, torch.float64).eval()


def forward_bound(model, input_ids, logits):
    """How far rounding can move a log-prob or logit between two float64 computations of one forward: per layer
    the longest accumulations -- attention over the S keys and its head dim, the two hidden-wide projections,
    the MLP's inner width --, then the LM head (hidden) and the log-softmax (vocab), counted as terms on numbers
    of the logits' size (1 + the largest |logit|). Plus one float32 rounding of that size: generate hands its
    logits over in float32 (transformers casts them), so a logit or a log-softmax of them moves by u32 |logit|
    twice at most."""
    text, size = model.config.text_config, 1 + float(logits.abs().max())
    D = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    # Qwen3-VL also normalises q and k over the head dim (+ D, counted for both families: an upper bound)
    per_layer = input_ids.shape[1] + 2 * D + 2 * text.hidden_size + text.intermediate_size
    terms = text.num_hidden_layers * per_layer + text.hidden_size + text.vocab_size
    return rounding(terms, size, torch.float64) + rounding(1, size, torch.float32)


def test_docstring_examples():
    assert doctest.testmod(rollout).failed == 0


def test_image_pad_count_matches_grid_and_prompts_are_left_padded(processor, checkpoint):
    tokenizer, image_processor = processor
    p, f = image_processor.patch_size, image_processor.patch_size * image_processor.merge_size  # 14, 28 | 16, 32
    images = [Image.new("RGB", (2 * f, f), "white"), Image.new("RGB", (4 * f, 3 * f), "white")]
    enc = rollout.encode_prompts(tokenizer, image_processor, images, ["q one", "a longer question two"])
    assert enc["image_grid_thw"].tolist() == [[1, 2, 4], [1, 6, 8]]  # in patches
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (enc["input_ids"] == image_id).sum(1).tolist() == [2, 12]  # h*w / merge**2
    assert torch.equal(enc["mm_token_type_ids"], (enc["input_ids"] == image_id).long())
    assert enc["pixel_values"].shape == (8 + 48, 3 * 2 * p * p)  # rows of both images, concatenated
    mask = enc["attention_mask"]
    assert mask[:, -1].all() and mask[0, 0] == 0  # left padding: last column is real for every row
    assert (mask.cummax(1).values == mask).all()  # once real, real until the end (no holes)
    text = tokenizer.decode(enc["input_ids"][1][mask[1].bool()])
    system = tiny.SYSTEM_TURN[family.family(checkpoint)]  # Qwen2.5-VL's default system turn, or none
    assert text.startswith(system + "<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert rollout.FORMAT_INSTRUCTION in text


@pytest.mark.parametrize("image", [
    Image.new("L", (40, 30), 128),                       # grayscale
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)),         # fully transparent -> white
    Image.new("P", (30, 30)),                            # palette
    Image.new("1", (50, 20)),                            # 1-bit
    Image.new("I;16", (33, 33), 1000),                   # 16-bit grayscale
    Image.new("RGB", (1, 1)),                            # tiny: below one patch
    Image.new("RGB", (3000, 2000)),                      # huge: above max_pixels
    Image.new("RGB", (1000, 3)),                         # 333:1, beyond smart_resize's 200:1 limit
], ids=["gray", "rgba", "palette", "1bit", "i16", "tiny", "huge", "extreme-aspect"])
def test_odd_images_encode(processor, image):
    tokenizer, image_processor = processor
    p, f = image_processor.patch_size, image_processor.patch_size * image_processor.merge_size
    out = rollout.prepare_image(image, min_pixels=f * f, max_pixels=f * f * 64, factor=f)
    assert out.mode == "RGB" and out.width % f == 0 and out.height % f == 0
    assert f * f <= out.width * out.height <= f * f * 64
    enc = rollout.encode_prompts(tokenizer, image_processor, [image], ["q"], max_pixels=f * f * 64)
    t, h, w = enc["image_grid_thw"][0].tolist()
    assert enc["pixel_values"].shape == (t * h * w, 3 * 2 * p * p)
    assert enc["mm_token_type_ids"].sum() == h * w // 4


def test_transparent_pixels_become_white():
    out = rollout.prepare_image(Image.new("RGBA", (28, 28), (255, 0, 0, 0)))
    assert out.getpixel((5, 5)) == (255, 255, 255)


def test_valid_image_is_kept_pixel_exact():
    image = visualmath.make_slots(1, seed=0)[0]["image"]
    assert rollout.prepare_image(image).tobytes() == image.tobytes()


def test_vision_token_ids_are_the_vision_specials(processor):
    tokenizer, _ = processor
    names = tokenizer.convert_ids_to_tokens(rollout.VISION_TOKEN_IDS(tokenizer))
    assert set(names) == {"<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"}


def _prompts(processor, sizes=((56, 28), (84, 56))):
    tokenizer, image_processor = processor
    ds = visualmath.make_slots(len(sizes), seed=3)
    images = [im.resize(size) for im, size in zip(ds["image"], sizes)]  # different sizes -> different pad
    return rollout.encode_prompts(tokenizer, image_processor, images, ds["question"])


def test_generate_logprobs_equal_training_forward(model64, processor, float64_norms):
    """Sample with KV cache (left-padded, 3-D mRoPE from mm_token_type_ids), then score the same tokens
    in one forward over prompt+response, as the RL loss will: per-token log-probs must agree (to float64
    rounding: model64)."""
    model, (tokenizer, _) = model64, processor
    enc = _prompts(processor)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=12,
                         suppress_tokens=rollout.VISION_TOKEN_IDS(tokenizer), eos_token_id=None,
                         return_dict_in_generate=True, output_logits=True)
    P = enc["input_ids"].shape[1]
    response = out.sequences[:, P:]  # (B, T)
    # Generation-time log-probs of the sampled tokens (raw logits; no suppression inside: T=1, no top-k).
    gen_logits = torch.stack(out.logits, 1).double()  # (B, T, vocab), handed over in float32
    suppress = rollout.VISION_TOKEN_IDS(tokenizer)
    gen_logits[..., suppress] = -float("inf")
    gen_logp = gen_logits.log_softmax(-1).gather(-1, response[..., None])[..., 0]  # (B, T)

    full = dict(enc)
    full["input_ids"] = out.sequences  # (B, P + T)
    full["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(response)], 1)
    full["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(response)], 1)
    with torch.no_grad():
        logits = model(**full).logits[:, P - 1:-1]  # (B, T, vocab): position t predicts token t+1
    logits[..., suppress] = -float("inf")
    train_logp = logits.log_softmax(-1).gather(-1, response[..., None])[..., 0]  # (B, T)
    assert response.shape[1] == 12
    bound = forward_bound(model, out.sequences, torch.cat([logits, gen_logits]).nan_to_num(0, 0, 0))
    torch.testing.assert_close(train_logp, gen_logp, atol=bound, rtol=0)  # a 1-D-position bug gives ~3e-3


def test_mm_token_type_ids_change_the_model_output(model64, processor, float64_norms):
    """The trap: without mm_token_type_ids Qwen2.5-VL quietly uses 1-D positions for image tokens (Qwen3-VL refuses):
    the output moves by more than rounding could move it."""
    model, enc = model64, _prompts(processor)
    without = {k: v for k, v in enc.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        if model.config.model_type == "qwen3_vl":
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                model(**without)
            return
        with_ids = model(**enc).logits[:, -1]
        without = model(**without).logits[:, -1]
    assert (with_ids - without).abs().max() > forward_bound(model, enc["input_ids"], with_ids)


def test_generate_needs_mm_token_type_ids(model64, processor, float64_norms):
    """Greedy generate with and without mm_token_type_ids differ in the first-step logits (Qwen3-VL's forward
    refuses to run without them, but its generate falls back to 1-D positions as quietly as Qwen2.5-VL's)."""
    model, enc = model64, _prompts(processor)
    kw = dict(do_sample=False, max_new_tokens=1, return_dict_in_generate=True, output_logits=True)
    with_ids = model.generate(**enc, **kw).logits[0]
    without = model.generate(**{k: v for k, v in enc.items() if k != "mm_token_type_ids"}, **kw).logits[0]
    with torch.no_grad():
        forward = model(**enc).logits[:, -1]
    bound = forward_bound(model, enc["input_ids"], forward)
    torch.testing.assert_close(with_ids.double(), forward, atol=bound, rtol=0)  # generate's: float32
    assert (without.double() - forward).abs().max() > bound
