"""The attention probe against its oracle: eager attention with output_attentions=True, on a tiny random
Qwen2.5-VL and Qwen3-VL (head_dim = hidden / heads, and not: every test on `setup` runs on the three; fp32, CPU) and
a batch laid out like a training batch: [left pad | prompt with image | response | right pad].

Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_connectivity.py
"""

import contextlib
import doctest

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration

import connectivity
from conftest import rounding
from connectivity import debias_sinks, image_attention, probe, query_positions
from ops import attention_rows

# token ids inside the tiny vocab (64): vision specials at the top, text ids below
VISION_START, VISION_END, IMAGE, VIDEO, PAD = 58, 59, 60, 61, 0
MERGE = 2  # spatial_merge_size: image tokens = grid_t * grid_h * grid_w / MERGE**2
PATCH_DIM = 3 * 2 * 4 * 4  # channels x temporal_patch x patch x patch


def tiny_model(seed=0, kind="qwen2_5_vl"):
    """A random tiny model: Qwen2.5-VL, or Qwen3-VL ("qwen3_vl": head_dim 16 = 64 / 4; "qwen3_vl_wide": 32, not 64 / 4)
    with q/k norms and DeepStack features into decoder layers 0 and 1, whose q/k-norm gains are drawn in [0.5, 1.5]
    (at their init of 1 a probe that skipped them would still see most of the same q and k)."""
    torch.manual_seed(seed)
    if kind != "qwen2_5_vl":
        head_dim = 16 if kind == "qwen3_vl" else 32
        side = head_dim // 2 * 5 // 16  # mRoPE sections interleaved over head_dim / 2 frequencies, as Qwen3-VL's
        config = Qwen3VLConfig(
            text_config=dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                             max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                              "mrope_section": [head_dim // 2 - 2 * side, side, side]}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=4, spatial_merge_size=MERGE, temporal_patch_size=2,
                               num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
            image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
            vision_end_token_id=VISION_END, attn_implementation="sdpa")
        model = Qwen3VLForConditionalGeneration(config).eval()
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                    norm.weight.uniform_(0.5, 1.5)
        return model
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2,  # GQA: 2 query heads per key head
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=MERGE, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, attn_implementation="sdpa")
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def make_batch(grids=((1, 4, 6), (1, 4, 4), (1, 6, 6)), response_lengths=(5, 3, 7), seed=1):
    """Prompts LEFT-padded to one length, responses right-padded: the layout of an RL training batch."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.tensor(grids)  # (N, 3)
    n_image = (grids.prod(-1) // MERGE**2).tolist()
    prompts = [[3, 4, VISION_START] + [IMAGE] * n + [VISION_END] + torch.randint(5, 50, (2 + i,), generator=g).tolist()
               for i, n in enumerate(n_image)]
    responses = [torch.randint(5, 50, (r,), generator=g).tolist() for r in response_lengths]
    P, R = max(map(len, prompts)), max(response_lengths)
    B, S = len(prompts), P + R
    input_ids = torch.full((B, S), PAD)
    attention_mask = torch.zeros(B, S, dtype=torch.long)
    response_mask = torch.zeros(B, S, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[b, P - len(p):P] = torch.tensor(p)
        input_ids[b, P:P + len(r)] = torch.tensor(r)
        attention_mask[b, P - len(p):P + len(r)] = 1
        response_mask[b, P:P + len(r)] = True
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  pixel_values=torch.randn(int(grids.prod(-1).sum()), PATCH_DIM, generator=g),
                  image_grid_thw=grids,
                  mm_token_type_ids=(input_ids == IMAGE).int())  # 3-D mRoPE needs it in transformers 5.x
    return inputs, response_mask


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen3_vl_wide"])
def setup(request):
    model = tiny_model(kind=request.param)
    inputs, response_mask = make_batch()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions  # L x (B, H, S, S)
    model.set_attn_implementation("sdpa")
    return model, inputs, response_mask, attentions


def oracle(attentions, inputs, query_pos, layers):
    """Head- and layer-mean of eager attention rows at query_pos over image keys: (B, T, V), sink (B, T)."""
    mean = torch.stack([attentions[i] for i in layers]).mean(dim=(0, 2))  # (B, S, S)
    image_mask = inputs["input_ids"] == IMAGE
    B, T = query_pos.shape
    V = int(image_mask.sum(1).max())
    patterns, sink = torch.zeros(B, T, V), torch.zeros(B, T)
    for b in range(B):
        first_key = int(inputs["attention_mask"][b].nonzero()[0])  # first non-pad token
        image_keys = image_mask[b].nonzero().squeeze(1)
        for t in range(T):
            if query_pos[b, t] >= 0:
                patterns[b, t, :len(image_keys)] = mean[b, query_pos[b, t], image_keys]
                sink[b, t] = mean[b, query_pos[b, t], first_key]
    return patterns, sink


def probe_tolerance(model, inputs, reference):
    """How far the probe's rows, read in an sdpa forward, may be from eager attention's (fp32): the two forwards'
    hidden states part at the first attention and every layer adds its own rounding -- attention over the S keys
    and its head dim, two hidden-wide projections, the MLP's inner width --, counted as terms on scores of size
    <= 1 (their terms sum to < 0.2 in absolute value in this random model); a probability p = exp(s - lse) moves
    by p (|ds| + |dlse|), so the size is 2 x the largest reference value."""
    text = model.config.text_config
    per_layer = inputs["input_ids"].shape[1] + text.hidden_size // text.num_attention_heads + \
        2 * text.hidden_size + text.intermediate_size
    return rounding(text.num_hidden_layers * per_layer, 2 * float(reference.max()))


@pytest.mark.parametrize("layers, chunk_elements", [(None, None), ([0, 1, 2, 3], 600)])  # 600: 2 rows a chunk
@pytest.mark.parametrize("query", ["predict", "self"])
def test_probe_matches_eager_attention(setup, query, layers, chunk_elements):
    model, inputs, response_mask, attentions = setup
    query_pos = query_positions(response_mask, query)  # (B, T)
    with probe(model, layers, chunk_elements) as p, torch.no_grad():
        p.arm(query_pos, inputs["input_ids"] == IMAGE)
        model(**inputs)
        got = p.result()
    assert p.layers == ((1, 2) if layers is None else (0, 1, 2, 3)) and p.captures == len(p.layers)
    patterns, sink = oracle(attentions, inputs, query_pos, p.layers)
    assert got["patterns"].shape == (3, 7, 9)  # B=3, longest response 7, largest image 9 tokens
    assert (got["patterns"] - patterns).abs().max() <= probe_tolerance(model, inputs, patterns)
    assert (got["sink"] - sink).abs().max() <= probe_tolerance(model, inputs, sink)
    assert got["image_valid"].sum(1).tolist() == [6, 4, 9]
    assert got["patterns"].sum() > 0.1  # not vacuous: there is attention on the image
    # sdpa on CPU runs torch's flash kernel, which hands over its log-sum-exp: every layer took the column read
    assert p.row_reads == 0 and p.lse_mismatches == 0


@pytest.mark.parametrize("corrupt", ["log2", "rows shifted"])
def test_a_kernel_log_sum_exp_that_means_something_else_is_caught(setup, corrupt, monkeypatch):
    # a kernel whose lse is in base 2, or laid out differently, must not be trusted: the probe checks it once,
    # falls back to whole rows for that kernel, and is still exact
    model, inputs, response_mask, attentions = setup
    spy = attention_rows.KernelLogSumExp.__torch_dispatch__

    def wrong(self, func, types, args=(), kwargs=None):
        out = spy(self, func, types, args, kwargs)
        if self.lse is not None:
            self.lse = self.lse / 0.6931471805599453 if corrupt == "log2" else self.lse.roll(1, dims=-1)
        return out
    monkeypatch.setattr(attention_rows.KernelLogSumExp, "__torch_dispatch__", wrong)
    query_pos = query_positions(response_mask)
    with probe(model, [1, 2]) as p, torch.no_grad():
        for _ in range(2):  # the verdict is kept: checked once, rows read on every layer of both forwards
            p.arm(query_pos, inputs["input_ids"] == IMAGE)
            model(**inputs)
            got = p.result()
    assert p.lse_mismatches == 1 and p.row_reads == 4
    patterns, sink = oracle(attentions, inputs, query_pos, [1, 2])
    assert (got["patterns"] - patterns).abs().max() <= probe_tolerance(model, inputs, patterns)
    assert (got["sink"] - sink).abs().max() <= probe_tolerance(model, inputs, sink)


# Each fused kernel hands back its log-sum-exp in its own layout (attention_rows.canonical_lse). The CPU's kernel
# gives (B, H, S); the others are simulated by re-laying its output out as they do. Usable layouts must give the
# CPU kernel's own column read bit for bit (same numbers, same ops); the rest must fall back to whole rows, give
# exactly what whole rows give, say why, and never raise.
NAN = float("nan")
LAYOUTS = {  # name -> (how the kernel lays the lse out, is it usable)
    "cudnn (B, H, S, 1)": (lambda lse: lse.unsqueeze(-1), True),
    "cudnn, (B, S, H, 1) memory": (lambda lse: lse.transpose(1, 2).contiguous().transpose(1, 2).unsqueeze(-1), True),
    "efficient, padded to 32 (NaN tail)": (lambda lse: torch.cat(
        [lse, lse.new_full(lse.shape[:2] + (-lse.shape[2] % 32 or 32,), NAN)], dim=-1), True),
    "efficient, not asked (B, H, 0)": (lambda lse: lse[..., :0], False),
    "(B, S, H): another layout": (lambda lse: lse.transpose(1, 2), False),
    "varlen (H, B * S)": (lambda lse: lse.transpose(0, 1).reshape(lse.shape[1], -1), False),
    "rank 5": (lambda lse: lse[..., None, None], False),
    "a known kernel returns no tensor": (lambda lse: None, False),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_kernel_layout_gives_the_row_read_answer(setup, layout, monkeypatch):
    model, inputs, response_mask, attentions = setup
    query_pos, image_mask = query_positions(response_mask), inputs["input_ids"] == IMAGE

    def read(use_kernel_lse=True):
        with probe(model, [1, 2]) as p, torch.no_grad():
            p.use_kernel_lse = use_kernel_lse
            for _ in range(2):  # a kernel's verdict is kept: the second forward takes the same path
                p.arm(query_pos, image_mask)
                model(**inputs)
                got = p.result()
        return p, got
    _, columns = read()  # the CPU kernel's (B, H, S) lse: the column read
    _, rows = read(use_kernel_lse=False)  # whole rows: the reference read
    relayout, usable = LAYOUTS[layout]
    spy = attention_rows.KernelLogSumExp.__torch_dispatch__

    def kernel_layout(self, func, types, args=(), kwargs=None):
        out = spy(self, func, types, args, kwargs)
        if func.overloadpacket.__name__ in attention_rows.LSE_KERNELS:  # the kernel's own output, once
            self.lse = relayout(self.lse)
        return out
    monkeypatch.setattr(attention_rows.KernelLogSumExp, "__torch_dispatch__", kernel_layout)
    with contextlib.nullcontext() if usable else pytest.warns(UserWarning, match="reading whole rows"):
        p, got = read()
    expected = columns if usable else rows
    assert torch.equal(got["patterns"], expected["patterns"]) and torch.equal(got["sink"], expected["sink"])
    assert p.row_reads == (0 if usable else 4) and p.lse_mismatches == 0
    assert p.lse_unusable == (0 if usable else 4) and bool(p.lse_rejections) != usable
    # and both reads are the attention itself (the eager oracle; tolerance as in the tests above)
    patterns, sink = oracle(attentions, inputs, query_pos, [1, 2])
    assert (got["patterns"] - patterns).abs().max() <= 1e-5 and (got["sink"] - sink).abs().max() <= 1e-5


def test_a_trust_check_that_fails_falls_back_to_rows(setup, monkeypatch):
    # a check that raises (a layout the check itself cannot read) distrusts the kernel, once, and says why
    model, inputs, response_mask, _ = setup
    query_pos, image_mask = query_positions(response_mask), inputs["input_ids"] == IMAGE

    def broken(*args):
        raise RuntimeError("Index tensor must have the same number of dimensions as input tensor")
    monkeypatch.setattr(attention_rows, "lse_agrees", broken)
    with probe(model, [1, 2]) as p, torch.no_grad(), pytest.warns(UserWarning, match="the check raised RuntimeError"):
        p.arm(query_pos, image_mask)
        model(**inputs)
        got = p.result()
    with probe(model, [1, 2]) as reference, torch.no_grad():
        reference.use_kernel_lse = False
        reference.arm(query_pos, image_mask)
        model(**inputs)
        rows = reference.result()
    assert p.lse_mismatches == 1 and p.row_reads == 2 and torch.equal(got["patterns"], rows["patterns"])
    assert "Index tensor" in next(iter(p.lse_rejections.values()))


def test_the_math_kernel_gives_no_log_sum_exp_and_rows_are_read(setup):
    # sdpa's math kernel (and any kernel the probe does not know) computes no log-sum-exp: whole rows, no warning
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model, inputs, response_mask, attentions = setup
    query_pos = query_positions(response_mask)
    with sdpa_kernel([SDPBackend.MATH]), probe(model, [1, 2]) as p, torch.no_grad():
        p.arm(query_pos, inputs["input_ids"] == IMAGE)
        model(**inputs)
        got = p.result()
    assert p.row_reads == 2 and p.kernels == {None} and not p.lse_rejections
    patterns, sink = oracle(attentions, inputs, query_pos, [1, 2])
    assert (got["patterns"] - patterns).abs().max() <= 1e-5 and (got["sink"] - sink).abs().max() <= 1e-5


def test_probe_without_kernel_mask_uses_causal_and_armed_padding(setup):
    # a single unpadded sample makes sdpa take its is_causal path: the kernel receives attention_mask=None
    model, inputs, response_mask, attentions = setup
    b, keep = 2, inputs["attention_mask"][2].bool()
    one = {k: v[b:b + 1][:, keep] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    one.update(pixel_values=inputs["pixel_values"][-36:], image_grid_thw=inputs["image_grid_thw"][2:])
    query_pos = query_positions(response_mask[b:b + 1][:, keep])
    with probe(model, [0, 3]) as p, torch.no_grad():
        p.arm(query_pos, one["input_ids"] == IMAGE)
        model(**one)
        got = p.result()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(**one, output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    patterns, sink = oracle(eager, one, query_pos, [0, 3])
    assert (got["patterns"] - patterns).abs().max() <= probe_tolerance(model, one, patterns)
    assert (got["sink"] - sink).abs().max() <= probe_tolerance(model, one, sink)


def test_probe_wraps_eager_with_its_additive_mask(setup):
    # eager hands the kernel a float mask (0 / dtype-min) and lives in the model file, not the global interface
    model, inputs, response_mask, attentions = setup
    query_pos = query_positions(response_mask)
    model.set_attn_implementation("eager")
    try:
        with probe(model, [2]) as p, torch.no_grad():
            assert model.config.text_config._attn_implementation == "atrl_probe_eager"
            p.arm(query_pos, inputs["input_ids"] == IMAGE)
            model(**inputs)
            got = p.result()
    finally:
        model.set_attn_implementation("sdpa")
    patterns, sink = oracle(attentions, inputs, query_pos, [2])
    assert (got["patterns"] - patterns).abs().max() <= probe_tolerance(model, inputs, patterns)
    assert (got["sink"] - sink).abs().max() <= probe_tolerance(model, inputs, sink)
    assert p.row_reads == 1  # eager computes its softmax in the model file: no log-sum-exp to reuse


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("background", [False, True])
def test_probe_on_cuda_matches_eager(setup, background):
    model, inputs, response_mask, attentions = setup
    model.cuda()
    try:
        query_pos = query_positions(response_mask)
        with probe(model, [1, 2], background=background) as p, torch.no_grad():
            p.arm(query_pos.cuda(), inputs["input_ids"].cuda() == IMAGE, then=lambda captured: captured["patterns"].cpu())
            model(**{k: v.cuda() for k, v in inputs.items()})
            got = p.result()
            assert torch.equal(p.outcome(), got["patterns"].cpu())
    finally:
        model.cpu()
    patterns, sink = oracle(attentions, inputs, query_pos, [1, 2])
    assert (got["patterns"].cpu() - patterns).abs().max() <= 1e-4 and (got["sink"].cpu() - sink).abs().max() <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION", "MATH"])
def test_what_the_probe_promises_under_each_cuda_kernel(setup, dtype, backend):
    """sdpa on CUDA runs one of four kernels (Hopper, torch >= 2.11, bf16: cuDNN first; fp32: efficient; no padding:
    flash; math when nothing else fits), each forced here in turn. Under every one the probe promises:
      1. no error, no distrusted kernel, and patterns equal to the whole-row read of the same forward within 1e-5
         (p = exp(s - lse) against softmax(s), both in fp32 from the same q/k, bf16 upcast exactly: s and each
         kernel's lse are fp32 sums of <= D + S = 16 + 24 terms of magnitude <= |lse| ~ log S = 3.2 (|s| < 0.2
         here, measured on the CPU), so p differs by <= 2 x 40 x 6e-8 x 3.2 = 1.5e-5 relative, and p < 0.2);
      2. flash, efficient and cuDNN: their log-sum-exp is used (no row read); math: whole rows (it has none);
      3. logits: with grad, probed = unprobed bit for bit under every kernel (a forward with grad asks efficient and
         cuDNN for the lse anyway); without grad, bit for bit under flash, efficient and math. Under cuDNN the
         request is part of the graph's cache key, so a probed no-grad forward runs the graph of a forward with
         grad: it equals that forward bit for bit, and may differ from an unprobed no-grad one in the last bits
         (printed, not asserted: unmeasured, no GPU was lent to write this)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model, inputs, response_mask, attentions = setup
    batch, responses = inputs, response_mask
    if backend == "FLASH_ATTENTION":  # flash takes no mask: one unpadded rollout (sdpa's is_causal path)
        keep = inputs["attention_mask"][2].bool()
        batch = {k: v[2:3][:, keep] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        batch.update(pixel_values=inputs["pixel_values"][-36:], image_grid_thw=inputs["image_grid_thw"][2:])
        responses = response_mask[2:3][:, keep]
    model.to("cuda", dtype)
    try:
        cuda_inputs = {k: v.cuda() for k, v in batch.items()}
        cuda_inputs["pixel_values"] = cuda_inputs["pixel_values"].to(dtype)
        query_pos, image_mask = query_positions(responses).cuda(), cuda_inputs["input_ids"] == IMAGE

        def forward(grad, read=None):
            with torch.set_grad_enabled(grad), sdpa_kernel([getattr(SDPBackend, backend)]):
                if read is None:
                    return model(**cuda_inputs).logits.detach()
                with probe(model, [1, 2]) as p:
                    p.use_kernel_lse = read == "columns"
                    p.arm(query_pos, image_mask)
                    return model(**cuda_inputs).logits.detach(), p.result(), p
        try:
            plain = {grad: forward(grad) for grad in (False, True)}
        except RuntimeError as error:  # flash and cuDNN take no fp32; cuDNN needs sm80+ and a recent cuDNN
            pytest.skip(f"{backend} cannot run this batch in {dtype} here: {str(error)[:200]}")
        probed = {grad: forward(grad, "columns") for grad in (False, True)}
        rows = forward(False, "rows")[1]
    finally:
        model.to("cpu", torch.float32)
    for grad, (_, got, p) in probed.items():
        assert p.lse_mismatches == 0 and not p.lse_rejections, p.lse_rejections
        assert p.row_reads == (2 if backend == "MATH" else 0), (grad, p.kernels)
        assert (got["patterns"] - rows["patterns"]).abs().max() <= 1e-5
        assert (got["sink"] - rows["sink"]).abs().max() <= 1e-5
    assert torch.equal(probed[True][0], plain[True])
    if backend == "CUDNN_ATTENTION":
        assert torch.equal(probed[False][0], plain[True])
        print(f"cuDNN {dtype}: probed vs unprobed no-grad logits, max |diff| "
              f"{(probed[False][0] - plain[False]).abs().max().item():.3g}")
    else:
        assert torch.equal(probed[False][0], plain[False])
    if dtype == torch.float32 and backend != "FLASH_ATTENTION":  # and against eager attention on the CPU
        patterns, sink = oracle(attentions, inputs, query_positions(response_mask), [1, 2])
        assert (probed[False][1]["patterns"].cpu() - patterns).abs().max() <= 1e-4


def test_logits_identical_with_probe_installed(setup):
    model, inputs, response_mask, _ = setup
    with torch.no_grad():
        plain = model(**inputs).logits
        with probe(model, [0, 1, 2, 3]) as p:
            p.arm(query_positions(response_mask), inputs["input_ids"] == IMAGE)
            probed = model(**inputs).logits
    assert p.captures == 4 and torch.equal(plain, probed)


def test_attention_implementation_restored_and_vision_untouched(setup):
    model, inputs, response_mask, _ = setup
    configs = (model.config, model.config.text_config, model.config.vision_config)
    before = [c._attn_implementation for c in configs]
    with probe(model):
        inside = [c._attn_implementation for c in configs]
    assert inside == ["sdpa", "atrl_probe_sdpa", "sdpa"]  # the vision tower keeps its kernel
    assert [c._attn_implementation for c in configs] == before == ["sdpa"] * 3
    with pytest.raises(KeyError), probe(model):
        raise KeyError("a failing training step")
    assert [c._attn_implementation for c in configs] == before
    assert not connectivity._ACTIVE  # no module is left registered


def test_gradient_checkpointing_captures_once(setup):
    model, inputs, response_mask, _ = setup
    query_pos, image_mask = query_positions(response_mask), inputs["input_ids"] == IMAGE
    with probe(model, [1, 2]) as p, torch.no_grad():
        p.arm(query_pos, image_mask)
        model(**inputs)
        reference = p.result()["patterns"]
    # transformers >= 5.23 names it activation_..., older 5.x gradient_... (train.py does the same)
    new_name = hasattr(model, "activation_checkpointing_enable")
    (model.activation_checkpointing_enable if new_name else model.gradient_checkpointing_enable)()
    model.train()  # checkpointing only re-runs layers in training mode (dropout is 0 here)
    try:
        with probe(model, [1, 2]) as p:
            calls = []
            wants = p._wants  # asked on every call of a selected layer's attention
            p._wants = lambda module, *a: (calls.append(module.layer_idx), wants(module, *a))[1]
            p.arm(query_pos, image_mask)
            model(**inputs).logits.float().pow(2).mean().backward()  # backward re-runs every layer
            got = p.result()["patterns"]
    finally:
        (model.activation_checkpointing_disable if new_name else model.gradient_checkpointing_disable)()
        model.eval()
        model.zero_grad(set_to_none=True)
    assert sorted(calls) == [1, 1, 2, 2]  # each selected layer ran twice ...
    assert p.captures == 2  # ... and was read once
    # in train mode (dropout 0) torch's CPU sdpa takes the same kernel as without grad: the same bits
    assert torch.equal(got, reference)


def test_probe_keeps_no_quadratic_tensor(setup):
    model, inputs, response_mask, _ = setup
    query_pos = query_positions(response_mask)
    with probe(model, [0, 1, 2, 3]) as p, torch.no_grad():
        p.arm(query_pos, inputs["input_ids"] == IMAGE)
        model(**inputs)
    B, S = inputs["input_ids"].shape
    T, V = query_pos.shape[1], 9
    stored = [v for v in vars(p).values() if isinstance(v, torch.Tensor)]
    assert stored and all(v.numel() <= max(B * T * V, B * S) for v in stored)
    assert not any(v.shape[-2:] == (S, S) for v in stored)
    assert p._mask_rows == {} and p._mask_source is connectivity._UNSET  # the kernel's mask is let go


def test_decode_steps_and_other_batches_are_not_captured(setup):
    model, inputs, response_mask, _ = setup
    with probe(model, [1]) as p, torch.no_grad():
        out = model(**inputs, use_cache=True)  # unarmed prefill
        p.arm(query_positions(response_mask), inputs["input_ids"] == IMAGE)
        step = dict(input_ids=out.logits[:, -1:].argmax(-1), position_ids=torch.zeros(3, 3, 1, dtype=torch.long),
                    attention_mask=torch.cat([inputs["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1))
        # transformers >= 5.24 calls the KV cache `cache`, older 5.x `past_key_values`
        name = "cache" if hasattr(out, "cache") else "past_key_values"
        model(**step, **{name: getattr(out, name)}, use_cache=True)  # one decode step: q_len == 1
        assert p.captures == 0
        model(**make_batch(response_lengths=(2, 2, 2))[0])  # another batch: its S is not the armed one
        assert p.captures == 0
        with pytest.raises(RuntimeError, match="captured nothing"):
            p.result()


def test_query_positions_predict_is_self_minus_one(setup):
    _, _, response_mask, _ = setup
    own, predict = query_positions(response_mask, "self"), query_positions(response_mask, "predict")
    assert torch.equal(predict[own >= 0], own[own >= 0] - 1) and torch.equal(own < 0, predict < 0)
    assert (own >= 0).sum(1).tolist() == [5, 3, 7]
    with pytest.raises(ValueError, match="query="):
        query_positions(response_mask, "next")


def test_debias_drops_outlier_key_and_renormalises():
    torch.manual_seed(0)
    B, T, V = 2, 6, 10
    raw = torch.rand(B, T, V + 2).softmax(-1) * 0.5  # (B, T, V + 2): sink, V image keys, one text key
    raw[:, :, 3] += 0.3  # image key 2 is a sink-like outlier in every row
    raw = raw / raw.sum(-1, keepdim=True)
    sink, patterns = raw[..., 0], raw[..., 1:V + 1]
    valid = torch.ones(B, V, dtype=torch.bool)
    valid[1, 8:] = False  # the second rollout has 8 image tokens
    patterns[1, :, 8:] = 0
    row_mask = torch.ones(B, T, dtype=torch.bool)
    row_mask[0, 4:] = False  # the first response has 4 tokens
    patterns[0, 4:], sink[0, 4:] = 0, 0
    dist, rho = debias_sinks(patterns, sink, valid, outlier_k=3.0, row_mask=row_mask)
    assert (dist[..., 2] == 0).all()  # the outlier key is gone
    # rows sum to 1: the row's mass (V terms), each division, and this sum (V terms): <= 2V + 1 roundings
    assert torch.allclose(dist.sum(-1)[row_mask], torch.ones(int(row_mask.sum())), atol=rounding(V + 1), rtol=0)
    assert (dist[~row_mask] == 0).all() and (rho[~row_mask] == 0).all() and (dist[1, :, 8:] == 0).all()
    assert ((rho >= 0) & (rho <= 1)).all()
    kept = patterns.sum(-1) - patterns[..., 2]
    # the kept mass summed two ways (V terms each, the raw row <= 1), two subtractions from 1 and a division
    # each, over the denominator
    denominator = 1 - sink - patterns[..., 2]
    assert torch.allclose(rho[row_mask], (kept / denominator)[row_mask], rtol=0,
                          atol=rounding(V + 3, 2 / float(denominator[row_mask].min())))
    plain, mass = debias_sinks(patterns, sink, valid, enabled=False, row_mask=row_mask)
    assert (plain[..., 2] > 0).all() or not row_mask.all()
    assert torch.equal(mass, patterns.sum(-1) * row_mask)  # disabled: rho = raw image mass, the same sum's bits
    empty, zero = debias_sinks(torch.zeros(1, 2, 3), torch.zeros(1, 2), torch.zeros(1, 3, dtype=torch.bool))
    assert not empty.isnan().any() and (zero == 0).all()  # no image tokens: zeros, never NaN


def test_image_attention_end_to_end(setup):
    model, inputs, response_mask, _ = setup
    patterns, rho = image_attention(model, inputs, response_mask)
    valid = query_positions(response_mask) >= 0
    assert patterns.shape == (3, 7, 9) and rho.shape == (3, 7)
    # each row is divided by its mass (V terms) and summed again (V terms): <= 2V + 1 roundings of numbers <= 1
    ones = torch.ones(int(valid.sum()))
    assert torch.allclose(patterns.sum(-1)[valid], ones, atol=rounding(patterns.shape[-1] + 1), rtol=0)
    assert ((rho > 0) & (rho <= 1))[valid].all() and (rho[~valid] == 0).all()
    assert model.config.text_config._attn_implementation == "sdpa"


def test_bad_layers_and_nested_probe_raise_clear_errors(setup):
    model = setup[0]
    with pytest.raises(ValueError, match="layers="):
        with probe(model, [4]):
            pass
    with probe(model):
        with pytest.raises(RuntimeError, match="already installed"):
            with probe(model):
                pass


def test_docstring_examples():
    assert doctest.testmod(connectivity, raise_on_error=False).failed == 0


def test_small_images_are_not_screened_for_outlier_keys():
    """With 2 image keys (VisualMath's default), the slot a token reads is not a 'sink'."""
    patterns = torch.tensor([[[0.60, 0.02], [0.50, 0.01]]])  # key 0 is 30x key 1: an outlier by the ratio rule
    sink, valid = torch.tensor([[0.2, 0.3]]), torch.ones(1, 2, dtype=torch.bool)
    dist, rho = debias_sinks(patterns, sink, valid)
    assert dist[0, :, 0].min() > 0.9 and rho.min() > 0.5  # key 0 kept
    dist4, _ = debias_sinks(patterns, sink, valid, min_keys=2)
    assert (dist4[0, :, 0] == 0).all()  # the same data screened: key 0 would be dropped


# ----------------------------------------------------------------------------- background mode and `then`


@pytest.mark.parametrize("background", [False, True])
def test_then_sees_the_result_and_background_reads_are_bit_identical(setup, background):
    """arm(then=fn) runs fn on the finished result inside the forward; a background probe (reads + fn on a
    worker thread) gives exactly the synchronous numbers, also with several chunks and layers."""
    model, inputs, response_mask, attentions = setup
    query_pos = query_positions(response_mask)
    with probe(model, [0, 1, 2, 3], 600) as p, torch.no_grad():  # 600 elements: 2 rows a chunk
        p.arm(query_pos, inputs["input_ids"] == IMAGE)
        model(**inputs)
        reference = p.result()
    seen = {}

    def then(captured):
        seen["grad"] = torch.is_grad_enabled()
        return captured["patterns"].sum(-1)  # (B, T) image mass, as a stand-in for train.py's weights

    with probe(model, [0, 1, 2, 3], 600, background=background) as p:  # grad on: as in a training forward
        p.arm(query_pos, inputs["input_ids"] == IMAGE, then=then)
        model(**inputs)
        mass, got = p.outcome(), p.result()
    assert torch.equal(got["patterns"], reference["patterns"]) and torch.equal(got["sink"], reference["sink"])
    assert torch.equal(mass, reference["patterns"].sum(-1)) and seen["grad"] is False
    patterns, _ = oracle(attentions, inputs, query_pos, [0, 1, 2, 3])
    # a sum of V probe values, each within the probe's tolerance of its own size (the row's mass bounds it)
    mass_max = float(patterns.sum(-1).max())
    bound = probe_tolerance(model, inputs, patterns.sum(-1)) + rounding(patterns.shape[-1], mass_max)
    assert (mass - patterns.sum(-1)).abs().max() <= bound and mass.sum() > 0.1
    assert p._worker is None or p._worker._shutdown  # probe() stopped the worker on exit


@pytest.mark.parametrize("background", [False, True])
def test_errors_in_then_and_missing_layers_reach_the_caller(setup, background):
    model, inputs, response_mask, _ = setup
    query_pos, image_mask = query_positions(response_mask), inputs["input_ids"] == IMAGE
    with probe(model, [1, 2], background=background) as p, torch.no_grad():
        p.arm(query_pos, image_mask, then=lambda captured: 1 / 0)
        model(**inputs)  # the forward itself is unaffected ...
        with pytest.raises(ZeroDivisionError):
            p.outcome()  # ... the error surfaces where the outcome is needed
        p.arm(query_pos, image_mask, then=lambda captured: 1)
        model(**make_batch(response_lengths=(2, 2, 2))[0])  # another batch: nothing is read, `then` never runs
        with pytest.raises(RuntimeError, match="read 0 of its 2 layers"):
            p.outcome()
        p.arm(query_pos, image_mask, then=lambda captured: captured["patterns"].shape)
        model(**inputs)  # the probe works again after both failures
        assert p.outcome() == (3, 7, 9)
