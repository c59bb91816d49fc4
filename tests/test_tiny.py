"""models/tiny.py: the random tiny checkpoint (tokenizer, image processor, model) survives save/from_pretrained,
its tokenizer is sane, and the SFT batch masks the prompt -- for the tiny Qwen2.5-VL and, where marked, the tiny
Qwen3-VL of both head_dim geometries. The SFT build itself is never run here.
The checkpoints are conftest.py's (seed 0, built once per session); how fast a build is, the
tests depend on, so one test builds another and times it."""

import doctest
import json
import os
import time

import pytest
import torch

import rollout
from conftest import TINY_KINDS
from models import family, tiny
from tasks import visualmath

KINDS = pytest.mark.parametrize("kind", list(TINY_KINDS))


def test_make_random_checkpoint_is_fast(tmp_path):
    began = time.process_time()  # CPU seconds, not wall: the test box is shared
    tiny.make_random_checkpoint(str(tmp_path), seed=0)
    assert time.process_time() - began < 30, "make_random_checkpoint must stay fast: the tests depend on it"


def test_docstring_examples():
    assert doctest.testmod(tiny).failed == 0


def test_checkpoint_has_the_files_from_pretrained_needs(random_checkpoint):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "generation_config.json"):
        assert os.path.exists(os.path.join(random_checkpoint, name)), name


@KINDS
def test_model_round_trip_is_exact(tiny_checkpoint, kind):
    """from_pretrained gives back the very weights make_model built (same seed => same init)."""
    model_type, head_dim, _ = TINY_KINDS[kind]
    checkpoint = tiny_checkpoint(kind)
    tokenizer, image_processor = family.load_processor(checkpoint)
    loaded = family.load_model(checkpoint, attn_implementation=None).eval()
    fresh = tiny.make_model(tokenizer, seed=0, model_type=model_type, head_dim=head_dim).eval()
    assert type(loaded).__name__ == family.FAMILIES[model_type][0] and loaded.config.model_type == model_type
    fresh_state = fresh.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, fresh_state[name]), name
    ex = visualmath.make_slots(1, seed=0)[0]
    enc = rollout.encode_prompts(tokenizer, image_processor, [ex["image"]], [ex["question"]])
    with torch.no_grad():  # the same weights through the same forward in one process: the same bits
        torch.testing.assert_close(loaded(**enc).logits, fresh(**enc).logits, rtol=0, atol=0)
    again = tiny.make_model(tokenizer, seed=1, model_type=model_type, head_dim=head_dim)
    assert not torch.equal(again.lm_head.weight, fresh.lm_head.weight)


@KINDS
def test_config_ids_match_the_tokenizer(tiny_checkpoint, kind):
    from transformers import AutoConfig

    tokenizer, _ = family.load_processor(tiny_checkpoint(kind))
    config = AutoConfig.from_pretrained(tiny_checkpoint(kind))
    ids = tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image_pad|>") and config.video_token_id == ids("<|video_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size
    text = config.text_config  # Qwen3-VL states head_dim (the wide kind: 64, not 128 / 4); Qwen2.5-VL implies it
    head_dim = TINY_KINDS[kind][1] or text.hidden_size // text.num_attention_heads
    assert getattr(text, "head_dim", head_dim) == head_dim
    assert sum(text.rope_parameters["mrope_section"]) * 2 == head_dim  # the sections cover head_dim / 2 frequencies


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_tokenizer_round_trips_text_and_keeps_specials_whole(tiny_checkpoint, kind):
    tokenizer, _ = family.load_processor(tiny_checkpoint(kind))
    for text in ["<think>3+4=7</think><answer>7</answer>", "Ünïcödé ✓ 日本語 \t\n  spaces", "", "1234567890"]:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.tokenize("12+305") == ["1", "2", "+", "3", "0", "5"]  # one token per digit
    for special in tiny.SPECIAL_TOKENS:
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1, special
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template(rollout.build_messages("q"), tokenize=False, add_generation_prompt=True)
    # the family's chat template: Qwen2.5-VL's default system turn, Qwen3-VL's none (tiny.SYSTEM_TURN, tested here)
    assert prompt.startswith(tiny.SYSTEM_TURN[kind] + "<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>q\n" in prompt


@pytest.mark.parametrize("kind, patch", [("qwen2_5_vl", 14), ("qwen3_vl", 16)])
def test_image_processor_round_trip(tiny_checkpoint, kind, patch):
    _, image_processor = family.load_processor(tiny_checkpoint(kind))
    assert type(image_processor).__name__ == "Qwen2VLImageProcessorPil"  # PIL backend: no torchvision
    token = (2 * patch) ** 2  # one merged LLM token: 28 x 28 or 32 x 32 px; the tiny bounds are 1 .. 256 tokens
    assert (image_processor.size["shortest_edge"], image_processor.size["longest_edge"]) == (token, 256 * token)
    assert image_processor.patch_size == patch and image_processor.merge_size == 2
    assert (tiny.MIN_PIXELS, tiny.MAX_PIXELS) == (784, 256 * 784)  # Qwen2.5-VL's, as saved since the first build


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_image_tokens_of_the_two_tasks(tiny_checkpoint, kind):
    """The learnability design: one 28x28 slot or grid cell = one LLM image token; the grid has 16, v1 two. On
    Qwen3-VL (32-px tokens) the 112-px grid is resized to 128 px and a 28-px cell to 32 px: still one cell a token."""
    tokenizer, image_processor = family.load_processor(tiny_checkpoint(kind))
    for name, n_tokens in (("visualmath-v1", 2), ("visualmath", 16)):
        ex = visualmath.make(name, 1, seed=0)[0]
        enc = rollout.encode_prompts(tokenizer, image_processor, [ex["image"]], [ex["question"]])
        assert enc["mm_token_type_ids"].sum().item() == n_tokens, name


def test_grid_responses_have_at_least_twenty_tokens(random_checkpoint):
    tokenizer, _ = family.load_processor(random_checkpoint)
    lengths = [len(tokenizer(ex["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
               for ex in visualmath.make_grid(50, seed=1)]
    assert min(lengths) >= 20, lengths


def test_lessons_end_on_the_grid_task_with_the_teacher_slips():
    plan = tiny.lessons(slip=1.0, steps=(1, 2, 3))
    assert [(name, n) for name, n, _ in plan] == [("one number", 1), ("two numbers", 2), ("grid", 3)]
    import random
    one, two, grid = (make(random.Random(0)) for _, _, make in plan)
    assert one["image"].size == (28, 28) and two["image"].size == (56, 28) and grid["image"].size == (112, 112)
    read = visualmath.read_values(grid["response"])
    assert read == [str(visualmath.TEACHER_SLIPS.get(int(v), int(v))) for v in grid["perception"]]


def test_sft_batch_supervises_exactly_the_response(random_checkpoint):
    tokenizer, image_processor = family.load_processor(random_checkpoint)
    examples = list(visualmath.make_slots(3, seed=4, n_numbers=3, digits=2))  # different response lengths
    batch = rollout.sft_batch(tokenizer, image_processor, examples)
    B, S = batch["input_ids"].shape
    assert batch["labels"].shape == batch["attention_mask"].shape == batch["mm_token_type_ids"].shape == (B, S)
    for b, ex in enumerate(examples):
        supervised = batch["labels"][b][batch["labels"][b] != -100]
        assert tokenizer.decode(supervised) == ex["response"] + "<|im_end|>"
    # labelled positions are real tokens, and no image token is ever a target
    assert (batch["attention_mask"][batch["labels"] != -100] == 1).all()
    assert (batch["mm_token_type_ids"][batch["labels"] != -100] == 0).all()


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl_wide"])
def test_a_few_sft_steps_fit_a_batch(tiny_checkpoint, kind):
    """Smoke: the SFT loss goes down on one repeated batch (gradients flow through the masked loss)."""
    tokenizer, image_processor = family.load_processor(tiny_checkpoint(kind))
    model = family.load_model(tiny_checkpoint(kind), attn_implementation=None).train()
    batch = rollout.sft_batch(tokenizer, image_processor, list(visualmath.make_slots(8, seed=5)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_ensure_tiny_model_uses_an_existing_build(tmp_path):
    (tmp_path / "sft_report.json").write_text(json.dumps({"steps": 1}))
    (tmp_path / "model.safetensors").write_bytes(b"")  # tiny.is_built: a report and weights (a report alone rebuilds)
    assert tiny.ensure_tiny_model(str(tmp_path)) == str(tmp_path)  # no rebuild: returns at once


def test_a_build_never_replaces_a_folder_that_is_not_a_tiny_build(tmp_path):
    run = tmp_path / "runs-default"  # e.g. a training run given as --out by mistake
    run.mkdir()
    (run / "log.jsonl").write_text('{"config": {}}\n')
    with pytest.raises(SystemExit, match="^models/tiny.py: error: --out .*runs-default' holds files that are not a tiny build"):
        tiny.build_tiny(str(run))
    assert sorted(os.listdir(run)) == ["log.jsonl"] and not os.path.exists(str(run) + ".tmp")
