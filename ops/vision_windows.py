"""ops/vision_windows.py -- Qwen2.5-VL's windowed vision attention in one call per layer instead of one per window.

Qwen2.5-VL's vision tower attends within windows of 112 px (64 patches) in 28 of its 32 blocks, and over each whole
image in the other 4 (cu_seqlens marks the segments: windows, or images). Under transformers' sdpa or eager
attention each block makes one attention call per segment after reading the segment lengths back to the host
(modeling_qwen2_5_vl.py, Qwen2_5_VLVisionAttention.forward): ~1,000 calls and 32 host syncs per image at train.py's
--max_pixels, ~2,300 at 1 MP. Only an implementation whose name contains "flash" is handed cu_seqlens instead,
for one call per block. This file registers such an implementation:

    segment i of a block:  out[s_i:s_{i+1}] = softmax(q[s_i:s_{i+1}] k[s_i:s_{i+1}]^T * scale) v[s_i:s_{i+1}]

computed for all segments at once:
    CUDA, fp16/bf16   torch.nn.attention.varlen.varlen_attn: one varlen flash call over the packed segments
    otherwise         one sdpa call per distinct segment length (a window holds 4a x 4b merged patches, a, b <= 4:
                      at most 16 lengths, usually 1-4), the segments of that length stacked as a batch. On the CPU
                      this is the loop's computation, bit for bit (the same kernel on the same rows:
                      tests/test_vision_windows.py checks it against transformers' own loop)

Where it departs from transformers: on CUDA the varlen kernel is not the loop's kernel (cuDNN, flash or efficient
per window), so the image features differ in the last bits (the tower is frozen by default; the rollout engine's
copy keeps transformers' loop). Opt-in, because its speed is unmeasured: no GPU was lent to write it
(bench/vision.py measures the loop's share of a forward and, with --fused, this).

Use:
    with vision_windows.fused(model):       # model: a Qwen2_5_VLForConditionalGeneration (or its inner model)
        model(**batch)                      # every vision block: one attention call
A failing fused call (an unexpected shape, a missing kernel) falls back to the per-window loop for that call,
with a warning once: never a crashed forward.
Tests: tests/test_vision_windows.py.
"""
import contextlib
import warnings

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "atrl_vision_windows_flash"  # "flash" in the name: transformers then hands over cu_seqlens (one call)
_warned = set()


def _segments(cu_seqlens):
    """{segment length: (n, length) row index of every segment of that length} from a (S + 1,) cu_seqlens."""
    bounds = cu_seqlens.tolist()  # one host read per call (the loop reads the lengths once per call too)
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    groups = {}
    for start, length in zip(starts, lengths):
        if length > 0:  # empty segments (cu_seqlens repeats a bound) hold no rows
            groups.setdefault(length, []).append(start)
    return {length: torch.tensor(firsts, device=cu_seqlens.device)[:, None] + torch.arange(length, device=cu_seqlens.device)
            for length, firsts in groups.items()}


def windows_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                      max_length_q=None, **kwargs):
    """query, key, value (1, H, T, D), segments cu_seq_lens_q (S + 1,) -> ((1, T, H, D), None), as transformers'
    attention functions return it. Any failure: the per-segment loop (transformers' sdpa per segment)."""
    try:
        return _all_segments(query, key, value, scaling, dropout, cu_seq_lens_q, max_length_q), None
    except Exception as error:  # NOTE: a surprise costs the loop's speed, never the forward
        if type(error) not in _warned:
            _warned.add(type(error))
            warnings.warn(f"fused vision windows failed ({type(error).__name__}: {str(error)[:200]}); "
                          "running them one by one", stacklevel=2)
        return loop_attention(module, query, key, value, scaling, dropout, cu_seq_lens_q), None


def _all_segments(query, key, value, scaling, dropout, cu_seqlens, max_length):
    _, H, T, D = query.shape
    if cu_seqlens is None or query.shape[0] != 1:
        raise ValueError("needs cu_seqlens and one packed sequence (batch 1)")
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and hasattr(torch.nn.attention, "varlen"):
        from torch.nn.attention.varlen import varlen_attn
        cu = cu_seqlens.to(torch.int32)
        length = int(max_length) if max_length is not None else int((cu[1:] - cu[:-1]).max())
        packed = [t[0].transpose(0, 1) for t in (query, key, value)]  # (T, H, D) each
        return varlen_attn(*packed, cu, cu, length, length, scale=scaling)[None]  # (1, T, H, D)
    out = query.new_empty(T, H, D)  # (T, H, D)
    for length, rows in _segments(cu_seqlens).items():  # rows (n, length)
        n = rows.shape[0]
        q, k, v = (t[0][:, rows.reshape(-1)].view(H, n, length, D).transpose(0, 1) for t in (query, key, value))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)  # (n, H, L, D)
        out[rows.reshape(-1)] = o.permute(0, 2, 1, 3).reshape(n * length, H, D)
    return out[None]  # (1, T, H, D)


def loop_attention(module, query, key, value, scaling, dropout, cu_seqlens):
    """What transformers does without a flash implementation: one sdpa call per segment, concatenated."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    parts = [sdpa_attention_forward(module, q, k, v, None, scaling=scaling, dropout=dropout, is_causal=False)[0]
             for q, k, v in zip(*(torch.split(t, lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(parts, dim=1)  # (1, T, H, D)


@contextlib.contextmanager
def fused(model):
    """The vision tower of `model` attends through windows_attention inside the block; restored on exit.

    NOTE: set on the vision config directly, as connectivity.probe does for the decoder: set_attn_implementation
    would try to load a flash-attention kernel package for a name containing "flash"."""
    config = model.config.vision_config
    AttentionInterface.register(NAME, windows_attention)
    previous, config._attn_implementation_internal = config._attn_implementation_internal, NAME
    try:
        yield model
    finally:
        config._attn_implementation_internal = previous
