"""Oracle: rollout.encode_prompts gives the tensors transformers' own Qwen2_5_VLProcessor / Qwen3VLProcessor gives.

rollout.py replaces the stock processor (its docstring says why), so the stock one is the reference: built
from the same tokenizer and image processor, fed the same chat-template text and images, it must produce the
same input_ids, attention_mask, mm_token_type_ids, pixel_values and image_grid_thw, to the bit. Two image
processors: the tiny checkpoint's (models/tiny.py) and one shaped like the real Qwen2.5-VL-3B-Instruct's
preprocessor_config.json (patch 14, merge 2, temporal patch 2, min_pixels 3136 = 56 x 56, max_pixels
12845056 = 16384 x 28 x 28, CLIP mean/std), loaded from disk the way a hub checkpoint is; the tokenizer is
the tiny one in both (the real one is a download). The same for Qwen3-VL: the tiny Qwen3-VL checkpoint, and its
tokenizer with an image processor shaped like Qwen3-VL-4B-Instruct's (patch 16, merge 2, temporal patch 2,
shortest_edge 65536 = 64 x 32 x 32, longest_edge 16777216, mean/std 0.5), against Qwen3VLProcessor. Images: random noise (which makes any resampling
difference show), one already of a valid size and three that must be resized up, down and to multiples of 28, with the checkpoint's pixel bounds and with explicit ones (train.py passes its own).

NOTE: Qwen2_5_VLProcessor's constructor insists on a video processor, and that class needs torchvision,
which this project does not require (DESIGN.md §4). The test skips only that constructor type check and
gives it no video processor; the image and text paths compared are the stock ones.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_processor_oracle.py
"""
import json
import os
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

import rollout
from models import family

QWEN25_VL_3B_PREPROCESSOR = {  # Qwen/Qwen2.5-VL-3B-Instruct's preprocessor_config.json
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2_5_VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
QWEN3_VL_4B_PREPROCESSOR = {  # Qwen/Qwen3-VL-4B-Instruct's preprocessor_config.json (as read in public copies of it)
    "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Qwen2VLImageProcessorFast", "processor_class": "Qwen3VLProcessor"}
SHORTEST_EDGE = {"tiny": 784, "3b": 3136, "tiny-qwen3": 1024, "4b": 65536}


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory):
    """{"tiny": the random tiny checkpoint (conftest.py), "3b": its tokenizer + the real 3B's image-processor
    config; "tiny-qwen3", "4b": the same for Qwen3-VL}."""
    found = {"tiny": tiny_checkpoint("qwen2_5_vl"), "tiny-qwen3": tiny_checkpoint("qwen3_vl")}
    for name, source, config in (("3b", found["tiny"], QWEN25_VL_3B_PREPROCESSOR),
                                 ("4b", found["tiny-qwen3"], QWEN3_VL_4B_PREPROCESSOR)):
        found[name] = str(tmp_path_factory.mktemp(f"{name}-shaped"))
        for file in os.listdir(source):
            if file.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy(os.path.join(source, file), found[name])
        with open(os.path.join(found[name], "preprocessor_config.json"), "w") as f:
            json.dump(config, f)
    return found


def stock_processor(tokenizer, image_processor):
    """The family's own processor class (Qwen2.5-VL's or Qwen3-VL's, by the image processor's patch size)."""
    from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor

    cls = Qwen3VLProcessor if image_processor.patch_size == 16 else Qwen2_5_VLProcessor
    with mock.patch.object(cls, "check_argument_for_proper_class", lambda self, name, arg: None):
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                   chat_template=tokenizer.chat_template)


def images():
    noise = np.random.default_rng(0)
    return [Image.fromarray(noise.integers(0, 256, (28, 56, 3), dtype=np.uint8)),          # valid as it is (28-px tokens)
            Image.fromarray(noise.integers(0, 256, (37, 100, 3), dtype=np.uint8)),         # not a multiple of 28
            Image.fromarray(noise.integers(0, 256, (480, 640, 3), dtype=np.uint8)),        # large
            Image.fromarray(noise.integers(0, 256, (20, 20, 3), dtype=np.uint8))]          # below one merged patch


@pytest.mark.parametrize("bounds", [None, (2, 16)], ids=["checkpoint-bounds", "explicit-bounds"])  # in tokens
@pytest.mark.parametrize("which", ["tiny", "3b", "tiny-qwen3", "4b"])
def test_encode_prompts_equals_the_stock_processor(checkpoints, which, bounds):
    tokenizer, image_processor = family.load_processor(checkpoints[which])
    assert image_processor.size["shortest_edge"] == SHORTEST_EDGE[which]
    questions = ["What is 1+2?", "a much longer question about the picture", "q", "tiny"]
    token = (image_processor.patch_size * image_processor.merge_size) ** 2  # px of one merged token: 28^2 or 32^2
    min_pixels, max_pixels = (bounds[0] * token, bounds[1] * token) if bounds else (None, None)
    ours = rollout.encode_prompts(tokenizer, image_processor, images(), questions, min_pixels, max_pixels)
    texts = [tokenizer.apply_chat_template(rollout.build_messages(q), tokenize=False, add_generation_prompt=True)
             for q in questions]
    size = {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}} if bounds else {}
    ref = stock_processor(tokenizer, image_processor)(images=images(), text=texts, return_tensors="pt",
                                                      padding=True, **size)
    assert ours["image_grid_thw"][:, 1:].prod(-1).min() >= 4 and len(set(map(tuple, ours["image_grid_thw"].tolist()))) == 4
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw", "pixel_values"):
        assert ours[key].shape == ref[key].shape, key
        assert torch.equal(ours[key], ref[key]), key
