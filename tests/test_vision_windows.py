"""ops/vision_windows.py against transformers' own per-window loop: the vision tower's output bit for bit on the CPU
(fp32 and bf16, ragged windows, the tiny test model's geometry and the 3B tower's 112-px windows), one attention
call per block, the fall-back to the loop, and the implementation restored.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_vision_windows.py
"""
import contextlib

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from conftest import bf16_attention
from ops import vision_windows
from test_connectivity import make_batch, tiny_model


def tower_3b_like(depth=2):
    """The 3B tower's window geometry (patch 14, merge 2, 112-px windows = 4 x 4 merged patches), narrow and shallow;
    block 1 attends over whole images (as blocks 7, 15, 23, 31 do in the real tower)."""
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]), attn_implementation="sdpa")
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def features(model, pixels, grids):
    with torch.no_grad():
        return torch.cat(list(model.model.get_image_features(pixels, grids).pooler_output))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("geometry", ["tiny test model", "3B windows"])
def test_fused_windows_equal_the_loop_bit_for_bit(geometry, dtype, monkeypatch):
    if geometry == "tiny test model":
        model, inputs = tiny_model(), make_batch()[0]
        pixels, grids = inputs["pixel_values"], inputs["image_grid_thw"]  # 2 x 3, 2 x 2, 3 x 3 merged: ragged
    else:
        model = tower_3b_like()
        grids = torch.tensor([[1, 14, 18], [1, 8, 8], [1, 22, 6]])  # 7 x 9, 4 x 4, 11 x 3 merged: ragged windows
        pixels = torch.randn(int(grids.prod(-1).sum()), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    model.to(dtype)
    pixels = pixels.to(dtype)
    calls = []
    original = vision_windows.windows_attention
    with bf16_attention() if dtype == torch.bfloat16 else contextlib.nullcontext():  # both on one kernel
        loop = features(model, pixels, grids)
        monkeypatch.setattr(vision_windows, "windows_attention",
                            lambda *a, **k: (calls.append(1), original(*a, **k))[1])
        with vision_windows.fused(model):
            fused = features(model, pixels, grids)
    assert torch.equal(fused, loop)  # same kernel on the same rows: nothing to round differently
    assert len(calls) == model.config.vision_config.depth  # one call per block, not per window
    assert model.config.vision_config._attn_implementation == "sdpa"


def test_a_failing_fused_call_falls_back_to_the_loop_and_the_name_is_restored(monkeypatch):
    model, inputs = tiny_model(), make_batch()[0]
    loop = features(model, inputs["pixel_values"], inputs["image_grid_thw"])

    def broken(*args):
        raise RuntimeError("no kernel for this shape")
    monkeypatch.setattr(vision_windows, "_all_segments", broken)
    monkeypatch.setattr(vision_windows, "_warned", set())
    with pytest.warns(UserWarning, match="running them one by one"), vision_windows.fused(model):
        assert model.config.vision_config._attn_implementation == vision_windows.NAME
        assert model.config.text_config._attn_implementation == "sdpa"  # the decoder keeps its own
        assert torch.equal(features(model, inputs["pixel_values"], inputs["image_grid_thw"]), loop)
    with pytest.raises(KeyError), vision_windows.fused(model):
        raise KeyError("a failing forward")
    assert model.config.vision_config._attn_implementation == "sdpa"
