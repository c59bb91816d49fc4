"""rollout.py §Sampling: vision tokens never sampled, exact Gumbel-max sampling, batch bookkeeping
(per-image pixel rows, re-padding, dropping flat groups)."""
import collections

import pytest
import torch

import rollout
from models import family, tiny
from tasks import visualmath


@pytest.fixture(scope="module")
def random_model(random_checkpoint):  # conftest.py
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(random_checkpoint, dtype=torch.float32).eval()
    return model, *family.load_processor(random_checkpoint)


def test_a_generated_image_pad_never_reaches_the_batch(random_model):
    model, tokenizer, image_processor = random_model
    vision = rollout.VISION_TOKEN_IDS(tokenizer)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # make the vision tokens the model's favourite continuation
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor(vision), torch.full((*out.shape[:-1], len(vision)), 50.0)))
    try:
        rows = list(visualmath.make_slots(2, seed=3))
        enc = rollout.encode_prompts(tokenizer, image_processor, [r["image"] for r in rows], [r["question"] for r in rows])
        plain = model.generate(**enc, do_sample=False, max_new_tokens=4)[:, enc["input_ids"].shape[1]:]
        assert torch.isin(plain, torch.tensor(vision)).all()  # without suppression they would be generated
        batch = rollout.sample_groups(model, tokenizer, image_processor, rows, 3, [5, 6], max_new_tokens=6)
    finally:
        hook.remove()
    response = batch["input_ids"][:, batch["prompt_len"]:][batch["response_mask"]]
    assert not torch.isin(response, torch.tensor(vision)).any()
    # the forward sees exactly the prompt's image slots, as many as image_grid_thw says
    slots = (batch["input_ids"] == image_pad).sum(1)
    assert slots.tolist() == (batch["image_grid_thw"].prod(-1) // 4).tolist()


def test_gumbel_sampler_draws_from_softmax_at_the_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for temperature in (1.0, 0.5):
        counts = collections.Counter()
        for key in range(6000):
            sampler = rollout.GumbelSampler(torch.tensor([key]), prompt_width=3, temperature=temperature)
            counts[int(sampler(torch.zeros(1, 7, dtype=torch.long), logits).argmax())] += 1
        freq = torch.tensor([counts[i] for i in range(4)], dtype=torch.float) / 6000
        p = (logits[0] / temperature).softmax(-1)
        # a frequency of 6000 draws: 4 standard errors sqrt(p (1 - p) / 6000) (each of the 8 outside it 1 time in
        # 16,000 for fresh keys)
        assert ((freq - p).abs() <= 4 * (p * (1 - p) / 6000).sqrt()).all(), (freq, p)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(rollout.GumbelSampler(torch.tensor([k]), 0, top_p=0.7)(torch.zeros(1, 1, dtype=torch.long),
                                                                       logits).argmax()) for k in range(500)}
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.7; the tail is never drawn


def test_same_key_same_sample_whatever_the_batch(random_model):
    model, tokenizer, image_processor = random_model
    rows = list(visualmath.make_slots(3, seed=4))
    both = rollout.sample_groups(model, tokenizer, image_processor, rows, 2, [10, 11, 12], max_new_tokens=6)
    alone = rollout.sample_groups(model, tokenizer, image_processor, rows[1:2], 2, [11], max_new_tokens=6)
    assert both["texts"][2:4] == alone["texts"]
    assert both["keys"][2:4].tolist() == alone["keys"].tolist()


def fake_batch(grids, rewards, prompt_len, response_len):
    """A rollout batch with distinct pixel rows per image (row value = sample index)."""
    B = len(grids)
    grid = torch.tensor([[1, h, w] for h, w in grids])
    pixel_values = torch.cat([torch.full((h * w, 3), float(b)) for b, (h, w) in enumerate(grids)])
    S = prompt_len + response_len
    return {"input_ids": torch.arange(B * S).view(B, S), "attention_mask": torch.ones(B, S, dtype=torch.long),
            "mm_token_type_ids": torch.zeros(B, S, dtype=torch.long),
            "full_response_mask": torch.cat([torch.zeros(B, prompt_len), torch.ones(B, response_len)], 1).bool(),
            "response_mask": torch.ones(B, response_len, dtype=torch.bool), "truncated": torch.zeros(B, dtype=torch.bool),
            "image_grid_thw": grid, "keys": torch.arange(B), "rewards": torch.tensor(rewards),
            "accuracy": torch.tensor(rewards), "format": torch.ones(B), "pixel_values": pixel_values,
            "prompt_len": prompt_len, "texts": [str(b) for b in range(B)], "answers": ["1"] * B,
            "choices": [[]] * B, "precisions": [None] * B}


def test_select_takes_each_samples_own_pixel_rows():
    batch = fake_batch([(2, 2), (4, 2), (2, 6)], [0.0, 1.0, 0.0], prompt_len=3, response_len=2)
    sub = rollout.select(batch, [2, 0])
    assert sub["pixel_values"][:, 0].tolist() == [2.0] * 12 + [0.0] * 4  # not pixel_values[[2, 0]]
    assert sub["image_grid_thw"].tolist() == [[1, 2, 6], [1, 2, 2]] and sub["texts"] == ["2", "0"]


def test_drop_flat_groups_and_concat_repad():
    a = fake_batch([(2, 2)] * 4, [1.0, 1.0, 0.0, 1.0], prompt_len=3, response_len=2)  # G=2: group 0 is flat
    kept, n_flat = rollout.drop_flat_groups(a, 2)
    assert n_flat == 1 and kept["texts"] == ["2", "3"]
    b = fake_batch([(2, 2)] * 2, [0.0, 1.0], prompt_len=5, response_len=4)
    both = rollout.concat(kept, b, pad_id=-1)
    assert both["prompt_len"] == 5 and both["input_ids"].shape == (4, 9)
    # the first batch is left-padded by 2 prompt columns and right-padded by 2 response columns
    assert both["input_ids"][0, :2].tolist() == [-1, -1] and both["attention_mask"][0, :2].tolist() == [0, 0]
    assert both["response_mask"][0].tolist() == [True, True, False, False]
    assert both["full_response_mask"][0].tolist() == [False] * 5 + [True, True, False, False]
    assert rollout.count_flat_groups(both["rewards"], 2) == 0


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_blacken_patches_equals_blackening_the_image_before_processing(model_type):
    """Oracle: blacken the family's patches (14 px Qwen2.5-VL, 16 px Qwen3-VL) of the PIL image, then run the image
    processor; rows must match exactly."""
    import numpy as np
    import PIL.Image
    image_processor = tiny.make_image_processor(model_type)
    p, f = image_processor.patch_size, image_processor.patch_size * image_processor.merge_size
    images = [rollout.prepare_image(visualmath.make("visualmath", 2, seed=3)[i]["image"], factor=f) for i in range(2)]
    enc = image_processor(images=images, do_resize=False, return_tensors="pt")
    batch = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"], "keys": torch.tensor([7, 8])}
    out = rollout.blacken_patches(batch, image_processor, 0.5)
    expected = []
    for image, key, (_, gh, gw) in zip(images, (7, 8), enc["image_grid_thw"].tolist()):
        drop = torch.rand(gh * gw, generator=torch.Generator().manual_seed(key)) < 0.5
        # row r of pixel_values is patch raster_of[r] (rows go merge window by merge window)
        raster_of = torch.arange(gh * gw).view(gh // 2, 2, gw // 2, 2).permute(0, 2, 1, 3).reshape(-1)
        pixels = np.array(image)
        for r in drop.nonzero().flatten().tolist():
            pr, pc = divmod(int(raster_of[r]), gw)
            pixels[pr * p:(pr + 1) * p, pc * p:(pc + 1) * p] = 0
        expected.append(PIL.Image.fromarray(pixels))
        assert 0.2 < drop.float().mean() < 0.8
    reference = image_processor(images=expected, do_resize=False, return_tensors="pt")["pixel_values"]
    assert torch.equal(out["pixel_values"], reference)
    assert torch.equal(rollout.blacken_patches(batch, image_processor, 0.0)["pixel_values"], batch["pixel_values"])
    assert torch.equal(out["image_grid_thw"], batch["image_grid_thw"])  # everything else is the same batch
