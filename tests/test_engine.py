"""engine.py against its reference, transformers' generate (rollout.generate with engine=None), and the
properties its speed rests on, for both families: every test on the `warm` model runs on a tiny Qwen2.5-VL, a tiny
Qwen3-VL (q/k normalised per head) and one whose head_dim is not hidden / heads (as Qwen3-VL-4B's) -- conftest's
TINY_KINDS. CPU, seconds each (the train.py runs: ~15 s each; a CUDA test skips itself).

What is checked:
- the same response ids, masks and truncation flags as generate -- greedy, sampled, top_p < 1, temperature
  0.7 -- on left-padded prompts with two image sizes, rows that stop early and rows cut at the budget, with the
  vision tokens made the favourite continuation (so suppression matters); and the LM head's logits at every
  step equal bit for bit (so the equality is no luck of the argmax);
- Qwen3-VL's per-head q/k norms matter: the engine without them decodes other tokens (the test has teeth);
- the invariants it relies on: a prefill of each prompt once gives the K/V and last hidden state of a prefill
  of its G copies, bit for bit; `rope_base` equals transformers' get_rope_index; key columns in buckets (the
  CUDA layout) and reading "all done?" every few steps change no token;
- step() reads nothing back to the host (.item(), .tolist(), bool(), nonzero() ... raise inside it) and
  torch._dynamo traces it as one graph, with no break: it can be captured as a CUDA graph;
- bf16 decoding: the engine's copy holds the policy's weights rounded to bf16 (what autocast feeds the
  matmuls), follows an optimizer step after refresh(), and decodes what generate decodes on a bf16 model;
- train.py: `--rollout hf` and the engine log the same records (all but time_*), for each family in one process,
  and in two gloo processes (DDP, FSDP2: the engine then decodes from a gathered copy; DDP on Qwen3-VL too); `--bf16 1` runs; eval.py's
  responder gives the same texts; a bad --rollout stops in one line.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_engine.py
"""
import contextlib
import inspect
import math
import subprocess
import sys

import pytest
import torch

import engine
import rollout
from conftest import bf16_attention
from models import family
from tasks import visualmath
from conftest import REPO, TINY_KINDS, rounding
from test_train import records, run_train


@pytest.fixture(scope="module", params=list(TINY_KINDS))
def warm(request, tiny_checkpoint):  # conftest.py: a few seconds of SFT, so responses end at different lengths
    path = tiny_checkpoint(request.param, warm=True)
    return family.load_model(path).eval(), *family.load_processor(path)


def mixed_prompts(tokenizer, image_processor, padded=True):
    """Two grid prompts (16 image tokens) and two slot prompts (2 image tokens): left padding (14 columns on Qwen2.5-VL);
    padded=False: four grid prompts, all of one length (train.py's default task: generate then uses no mask)."""
    rows = list(visualmath.make("visualmath", 2 + 2 * (not padded), seed=2))
    rows += list(visualmath.make_slots(2, seed=3)) if padded else []
    return rollout.encode_prompts(tokenizer, image_processor, [r["image"] for r in rows], [r["question"] for r in rows])


@contextlib.contextmanager
def recorded_logits(model, tokenizer):
    """Every LM-head output, in call order (one call per token in either decoder), with three edits that make the
    test independent of what the checkpoint has learnt: the vision tokens are made the favourite (+50), so a
    decoder that did not suppress them would write them; row b (of 12) ends at token 2 + b % 5 (<|im_end|> +100
    at that call: the favourite by 100 whatever the checkpoint learnt) unless it ends before; and rows with b % 4 == 3
    can never end (EOS logits -inf): cut at the budget. Set, not shifted: the warm fixture is trained on this machine's
    float path, and under ATEN_CPU_CAPABILITY=avx2 on one thread one learnt an EOS lead of over 100 (#33)."""
    vision, seen = rollout.VISION_TOKEN_IDS(tokenizer), []
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    rows = torch.arange(12)

    def hook(module, inputs, out):
        out = out.clone()
        out[..., vision] += 50.0
        end = rows[2 + rows % 5 == len(seen)]
        out[end, -1, eos[0]] = out[end, -1].amax(-1) + 100.0
        out[rows[rows % 4 == 3][:, None], -1, torch.tensor(eos)[None, :]] = float("-inf")
        seen.append(out)
        return out
    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("temperature, top_p, padded", [(0.0, 1.0, True), (1.0, 1.0, True), (1.0, 0.8, True),
                                                      (0.7, 1.0, True), (0.0, 1.0, False), (1.0, 1.0, False)])
def test_the_engine_decodes_what_generate_decodes(warm, temperature, top_p, padded):
    model, tokenizer, image_processor = warm
    enc = mixed_prompts(tokenizer, image_processor, padded)
    keys = list(range(40, 52))  # 4 prompts x G 3
    with recorded_logits(model, tokenizer) as reference_logits:
        reference = rollout.generate(model, tokenizer, enc, 13, temperature, top_p, keys, group_size=3)
    with recorded_logits(model, tokenizer) as engine_logits:
        ours = rollout.generate(model, tokenizer, enc, 13, temperature, top_p, keys, group_size=3,
                                engine=engine.DecodeEngine(model))
    for a, b in zip(reference, ours):  # response ids, masks, truncation flags
        assert torch.equal(a, b)
    response, mask, truncated = ours
    assert len(set(enc["attention_mask"].sum(1).tolist())) == 1 + padded  # left padding or none
    assert truncated.any() and (mask.sum(1) < 13).sum() >= 6  # rows cut at the budget, rows that stop early
    assert not torch.isin(response[mask], torch.tensor(rollout.VISION_TOKEN_IDS(tokenizer))).any()
    # the logits of every step, bit for bit: prefill (after repeating the hidden state) and each decode step
    assert len(engine_logits) == len(reference_logits) == mask.shape[1]
    for a, b in zip(reference_logits, engine_logits):
        assert torch.equal(a, b)


def test_qwen3s_per_head_qk_norms_change_the_tokens(warm):
    """The control: the same engine without Qwen3-VL's q/k norms decodes other tokens than generate."""
    model, tokenizer, image_processor = warm
    decoder = engine.DecodeEngine(model)
    assert decoder.qk_norm == hasattr(model.model.language_model.layers[0].self_attn, "q_norm")
    if not decoder.qk_norm:
        pytest.skip("Qwen2.5-VL has no q/k norms")
    enc, keys = mixed_prompts(tokenizer, image_processor), list(range(12))
    reference = rollout.generate(model, tokenizer, enc, 13, 1.0, 1.0, keys, group_size=3)
    decoder.qk_norm = False
    without = rollout.generate(model, tokenizer, enc, 13, 1.0, 1.0, keys, group_size=3, engine=decoder)
    assert not torch.equal(reference[0], without[0])


def test_the_exact_mode_prefills_what_generate_prefills(warm):
    """On the CPU the engine prefills the G copies of each prompt, as generate does: its cache holds the bits of a
    prefill of the copies whatever the BLAS. (A prefill of each prompt once gives those bits only where the GEMM
    rounds a row the same whatever the row count: MKL's AVX2 sgemm does not, #33 -- so CUDA's one-prefill path
    promises generate's tokens, test_the_cuda_layout_changes_no_token, not its bits.)"""
    model, tokenizer, image_processor = warm
    enc = mixed_prompts(tokenizer, image_processor)
    decoder = engine.DecodeEngine(model)
    P, B = enc["input_ids"].shape[1], 3 * len(enc["input_ids"])
    s = decoder._slot(B, P + 8)
    decoder._prefill(s, enc, 3, list(range(B)), [tokenizer.convert_tokens_to_ids("<|im_end|>")],
                     tokenizer.pad_token_id, rollout.VISION_TOKEN_IDS(tokenizer))
    with torch.no_grad():
        copies = model.model(**engine.repeat_groups(enc, 3), use_cache=True)
    cache = getattr(copies, "cache", None) or copies.past_key_values
    for i, layer in enumerate(cache.layers):
        assert torch.equal(s.k[i][:, :, :P], layer.keys) and torch.equal(s.v[i][:, :, :P], layer.values)


def test_rope_base_is_one_past_the_last_prompt_position(warm, doctest_examples):
    model, tokenizer, image_processor = warm
    enc = mixed_prompts(tokenizer, image_processor)
    accepted = inspect.signature(model.model.get_rope_index).parameters  # its arguments moved across 5.x
    kwargs = {k: enc[k] for k in ("image_grid_thw", "attention_mask", "mm_token_type_ids") if k in accepted}
    positions, _ = model.model.get_rope_index(enc["input_ids"], **kwargs)                  # (3, P, S)
    last = positions[:, :, -1]  # the last prompt token (left padding: the last column), text: 3 equal axes
    assert (last == last[0]).all()
    assert (last[0] + 1 < enc["attention_mask"].sum(1)).any()  # the grid's 16 image tokens span 4 positions
    assert torch.equal(engine.rope_base(enc["attention_mask"], enc["image_grid_thw"], 2), last[0] + 1)
    assert doctest_examples(engine, ["rope_base", "gumbel_scores"]) == 3


def test_the_cuda_layout_changes_no_token(warm):
    """What the engine does on CUDA, run on the CPU: key columns in buckets of 16 (the extra ones masked), "all
    done?" read every 4 steps (so it decodes past the last EOS) and its own attention (the query heads of a KV
    head packed); the responses are generate's (the logits differ in the last bits)."""
    model, tokenizer, image_processor = warm
    keys = list(range(12))
    for padded in (True, False):
        enc = mixed_prompts(tokenizer, image_processor, padded)
        with recorded_logits(model, tokenizer):
            reference = rollout.generate(model, tokenizer, enc, 13, 1.0, 1.0, keys, group_size=3)
        with recorded_logits(model, tokenizer):
            cuda_like = rollout.generate(model, tokenizer, enc, 13, 1.0, 1.0, keys, group_size=3,
                                         engine=engine.DecodeEngine(model, bucket=16, check_every=4, hf_attention=False))
        for a, b in zip(reference, cuda_like):
            assert torch.equal(a, b)


def prefilled(model, tokenizer, image_processor):
    """An engine and its buffers right after the prefill of the mixed prompts (G = 2), ready for step()."""
    decoder = engine.DecodeEngine(model)
    enc = mixed_prompts(tokenizer, image_processor)
    s = decoder._slot(8, enc["input_ids"].shape[1] + 8)
    logits = decoder._prefill(s, enc, 2, list(range(8)), [tokenizer.convert_tokens_to_ids("<|im_end|>")],
                              tokenizer.pad_token_id, rollout.VISION_TOKEN_IDS(tokenizer))
    decoder._emit(s, logits, 1.0, 1.0)
    return decoder, s, enc["input_ids"].shape[1]


SYNCS = [(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__",
                                           "nonzero", "cpu", "numpy")] + [(torch, "nonzero")]


@contextlib.contextmanager
def host_syncs_raise():
    """Every way Python code reads a tensor's value back to the host raises while this is on."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in SYNCS]

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside step()")
    try:
        for owner, name, _ in saved:
            setattr(owner, name, refuse)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def test_step_never_reads_a_tensor_back_to_the_host(warm):
    model, tokenizer, image_processor = warm
    decoder, s, P = prefilled(model, tokenizer, image_processor)
    with host_syncs_raise():
        with pytest.raises(AssertionError):  # the guard bites
            s.n.item()
        with torch.no_grad():
            for n in range(1, 5):
                decoder._step(s, P + n, 1.0, 0.9)  # top_p < 1: the sort/scatter path too
    assert s.n.tolist() == [5]


def test_step_traces_as_one_graph_without_breaks(warm):
    """torch._dynamo breaks a graph at anything data-dependent (a host read, a shape from values, nonzero):
    none in step(), so it is capturable as a CUDA graph (bench/decode.py replays it against eager on a GPU)."""
    model, tokenizer, image_processor = warm
    decoder, s, P = prefilled(model, tokenizer, image_processor)
    with torch.no_grad():
        explained = torch._dynamo.explain(decoder._step)(s, P + 1, 1.0, 1.0)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_bf16_decoding_uses_a_refreshed_bf16_copy(warm, tmp_path):
    model, tokenizer, image_processor = warm
    policy = type(model)(model.config).eval()
    policy.load_state_dict(model.state_dict())  # a private fp32 copy: the test updates its weights
    decoder = engine.DecodeEngine(policy, torch.bfloat16)
    assert decoder.model is not policy and next(decoder.model.parameters()).dtype == torch.bfloat16
    for name, p in decoder.model.named_parameters():
        assert torch.equal(p, dict(policy.named_parameters())[name].to(torch.bfloat16)), name
    with torch.no_grad():  # an "optimizer step"
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    decoder.refresh()
    for name, p in decoder.model.named_parameters():
        assert torch.equal(p, dict(policy.named_parameters())[name].to(torch.bfloat16)), name
    # and it decodes what generate decodes on the policy loaded in bf16 (as eval.py loads a model on a GPU)
    policy.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)  # a whole checkpoint: family.load_model reads its config.json
    reference_model = family.load_model(str(tmp_path), torch.bfloat16).eval()
    enc = mixed_prompts(tokenizer, image_processor)
    with bf16_attention():  # both decoders on the one kernel: the same ops in the same order, so the same bits
        reference = rollout.generate(reference_model, tokenizer, enc, 10, 1.0, 1.0, list(range(8)), group_size=2)
        ours = rollout.generate(policy, tokenizer, enc, 10, 1.0, 1.0, list(range(8)), group_size=2, engine=decoder)
    for a, b in zip(reference, ours):
        assert torch.equal(a, b)


def test_eval_responder_gives_the_same_texts(warm):
    import eval as ev
    model, tokenizer, image_processor = warm
    rows = list(visualmath.make_slots(3, seed=5))
    decoder = engine.DecodeEngine(model)
    for k, temperature in ((1, 0.0), (2, 1.0)):
        reference = ev.model_responder(model, tokenizer, image_processor, 12)(rows, [7, 8, 9], k, temperature)
        ours = ev.model_responder(model, tokenizer, image_processor, 12, engine=decoder)(rows, [7, 8, 9], k, temperature)
        assert ours == reference


def strip_times(recs):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in recs]


@pytest.mark.parametrize("kind", list(TINY_KINDS))
def test_train_logs_the_same_records_with_the_engine_and_with_generate(tiny_checkpoint, tmp_path, kind):
    """Default pixel bounds (the family's own); the checkpoint is saved as the family it is."""
    checkpoint = tiny_checkpoint(kind, warm=True)
    run_train(checkpoint, tmp_path / "hf", "--steps", "2", "--rollout", "hf")
    run_train(checkpoint, tmp_path / "engine", "--steps", "2")
    hf, ours = records(tmp_path / "hf"), records(tmp_path / "engine")
    assert strip_times(hf) == strip_times(ours)
    assert 0 < ours[0]["reward"] and "eval_accuracy" in ours[-1]  # rollouts were scored, the eval ran
    assert family.family(str(tmp_path / "engine" / "checkpoint-2")) == TINY_KINDS[kind][0]


@pytest.mark.parametrize("sharding, kind", [("ddp", "qwen2_5_vl"), ("fsdp", "qwen2_5_vl"), ("ddp", "qwen3_vl_wide")])
def test_two_gloo_processes_with_the_engine_match_one_with_generate(tiny_checkpoint, tmp_path, sharding, kind):
    """Under FSDP2 the engine decodes from a full copy gathered after each update (no collective per token)."""
    checkpoint = tiny_checkpoint(kind, warm=True)
    common = ["--steps", "2", "--micro_batch_size", "2", "--adam_eps", "1e-2"]
    run_train(checkpoint, tmp_path / "one", *common, "--rollout", "hf")
    run_train(checkpoint, tmp_path / "two", *common, "--fsdp", str(int(sharding == "fsdp")), torchrun=2)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in two] == [0, 1] and "eval_avg@4" in two[1]
    for a, b in zip(one, two):  # step 1 rolls out with the updated policy: the copy was refreshed
        assert a.keys() == b.keys()
        for key in ("reward", "accuracy", "response_len", "truncated", "eval_accuracy", "eval_avg@4"):
            if key in a:  # (eval: at the last step only); a batch's 8 non-negative float32 values summed per
                # rank or in one process: 7 roundings each way (u = eps / 2), then float64
                assert b[key] == pytest.approx(a[key], rel=rounding(7), abs=0), key


def test_bf16_training_runs_with_the_engine(warm_checkpoint, tmp_path):
    run_train(warm_checkpoint, tmp_path, "--steps", "2", "--bf16", "1")
    recs = records(tmp_path)
    assert [r["step"] for r in recs] == [0, 1] and all(r["skipped"] == 0 for r in recs)
    assert 0 < recs[0]["response_len"] and "eval_accuracy" in recs[-1]


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_bad_rollout_value_stops_in_one_line(script):
    proc = subprocess.run([sys.executable, script, "--rollout", "vllm"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert f"{script}: error: --rollout 'vllm': use one of engine, hf" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_decodes_what_the_eager_step_decodes(warm):
    """Each step replayed from its captured graph gives the bits the same step gives eagerly (same buckets)."""
    model, tokenizer, image_processor = warm
    model = type(model)(model.config).eval()
    model.load_state_dict(warm[0].state_dict())
    model.to("cuda")
    enc = mixed_prompts(tokenizer, image_processor)
    eager, graphed = engine.DecodeEngine(model, cuda_graphs=False), engine.DecodeEngine(model)
    runs = [rollout.generate(model, tokenizer, enc, 13, 1.0, 1.0, list(range(12)), group_size=3, engine=decoder)
            for decoder in (eager, graphed, graphed)]
    assert graphed.slot is not None and graphed.slot.graphs and graphed.stats["slots"] == 1
    for a, b, c in zip(*runs):  # the third call replays the graphs the second one captured
        assert torch.equal(a, b) and torch.equal(a, c)


# ----------------------------------------------------------------------------- what the engine keeps between calls


class SimulatedGraph:
    """What a CUDA graph is to the engine, on a CPU: a replay runs step() again on the very buffers the capture
    saw (a graph holds addresses). A graph kept past a reallocation of the buffers would write into the old ones,
    so the tokens would go wrong: the simulation has the same failure mode as the real thing."""

    def __init__(self, decoder, s, length, temperature, top_p):
        decoder._step(s, length, temperature, top_p)  # the warm-up step, the one emitted (capture runs nothing)
        self.replay = lambda: decoder._step(s, length, temperature, top_p)


def dataset_like_prompts(tokenizer, image_processor, n_batches, prompts, seed):
    """Batches of prompts whose widths vary as a real dataset's do: photos and diagrams of any size and aspect
    (sides 28-560 px, so 1 to 256 image tokens under the tiny processor's max_pixels) and questions of 1-12 words."""
    import random

    import PIL.Image
    rng = random.Random(seed)
    words = "what is the value of x in the figure below given that the angle".split()
    batches = []
    for _ in range(n_batches):
        images = [PIL.Image.new("RGB", (rng.randint(28, 560), rng.randint(28, 560)), tuple(rng.randrange(256) for _ in "rgb"))
                  for _ in range(prompts)]
        questions = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(prompts)]
        batches.append(rollout.encode_prompts(tokenizer, image_processor, images, questions))
    return batches


def test_buffers_and_graphs_are_kept_over_a_dataset_of_prompt_widths(warm, monkeypatch):
    """The CUDA layout (buckets of 128 columns, graphs) on the CPU, over 12 rollout batches whose prompt widths vary
    like a real dataset's, with two evaluation calls (fewer rows, then more rows) in between: every call decodes
    what a fresh engine (buffers of exactly its shape, no graph) decodes, bit for bit, while the kept engine
    allocates its buffers a few times (not once per new width) and captures each (rows, bucket, temperature) once
    per allocation. The old engine freed everything at every new (rows, capacity)."""
    model, tokenizer, image_processor = warm
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: pytest.fail("the engine must not empty the allocator cache"))
    layout = dict(bucket=128, check_every=4, hf_attention=False)
    kept = engine.DecodeEngine(model, **layout)
    kept.cuda_graphs = True  # captured and replayed, through the simulation
    monkeypatch.setattr(kept, "_capture", lambda s, *args: SimulatedGraph(kept, s, *args))
    eos, pad = [tokenizer.convert_tokens_to_ids("<|im_end|>")], tokenizer.pad_token_id
    suppress = rollout.VISION_TOKEN_IDS(tokenizer)
    batches = dataset_like_prompts(tokenizer, image_processor, 12, 2, seed=0)
    calls = [(enc, 2, 1.0) for enc in batches]  # (prompts, G, temperature): rollouts of 2 prompts x G 2
    calls.insert(4, (batches[0], 1, 0.0))  # an evaluation: greedy, 2 rows (views of the first rows)
    calls.insert(8, (dataset_like_prompts(tokenizer, image_processor, 1, 3, seed=1)[0], 2, 1.0))  # 6 rows: more
    capacities, old_slots, previous = [], 0, None
    for n, (enc, G, temperature) in enumerate(calls):
        keys = list(range(100 * n, 100 * n + len(enc["input_ids"]) * G)) if temperature else None
        args = (enc, G, 24, temperature, 1.0, keys, eos, pad, suppress)
        fresh = engine.DecodeEngine(model, **layout).generate(*args)  # the reference: exact buffers, eager
        assert torch.equal(kept.generate(*args), fresh), f"call {n}"
        shape = (len(enc["input_ids"]) * G, -(-(enc["input_ids"].shape[1] + 24) // 128) * 128)
        capacities.append(shape[1])
        old_slots += shape != previous  # the old engine: new buffers (and graphs) for every new (rows, capacity)
        previous = shape
    print(f"kept: {kept.stats}; the old engine: {old_slots} allocations; capacities {capacities}")
    # bounds (engine.py's docstring): slots <= 1 + log_1.25(widest / first) + row growths (one here)
    bound = 1 + math.ceil(math.log(max(capacities) / capacities[0], 1.25)) + 1
    assert kept.stats["slots"] <= bound and kept.stats["slots"] < old_slots, (kept.stats, old_slots, capacities)
    # captures: one per (rows, length bucket, temperature) per slot, never one per call
    assert kept.stats["captures"] <= kept.stats["slots"] * 3 * max(capacities) // 128
    assert kept.slot.B == 6 and kept.slot.capacity >= max(capacities) and len(set(capacities)) >= 3
    memory = kept.memory()
    assert memory["kv_cache_bytes"] >= 2 * 4 * 6 * kept.slot.capacity * 2 * 32 * 4  # layers x K, V x rows x C x heads x D x fp32
    assert memory["weight_copy_bytes"] == 0 and memory["graphs"] == len(kept.slot.graphs) > 0


def test_a_call_with_more_rows_than_max_rows_runs_in_chunks_of_whole_prompts(warm):
    """max_rows bounds the cache (train.py: its rollouts per rank; on CUDA only): a larger call -- an evaluation's k
    samples of many questions -- decodes whole prompts max_rows at a time, which is exactly what separate calls on
    those prompts decode (their outputs padded to one width with pad tokens, as generate pads finished rows)."""
    model, tokenizer, image_processor = warm
    enc = mixed_prompts(tokenizer, image_processor)  # 4 prompts of two image sizes
    eos, pad, suppress = [tokenizer.convert_tokens_to_ids("<|im_end|>")], tokenizer.pad_token_id, rollout.VISION_TOKEN_IDS(tokenizer)
    chunked = engine.DecodeEngine(model)
    chunked.max_rows = 5  # (a CPU ignores max_rows given to the constructor) -> 2 prompts x G 2 per call
    keys = list(range(8))
    got = chunked.generate(enc, 2, 10, 1.0, 1.0, keys, eos, pad, suppress)
    parts = [engine.DecodeEngine(model).generate(engine._prompt_rows(enc, i, i + 2), 2, 10, 1.0, 1.0,
                                                 keys[2 * i:2 * i + 4], eos, pad, suppress) for i in (0, 2)]
    width = max(p.shape[1] for p in parts)
    expected = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad) for p in parts])
    assert torch.equal(got, expected) and chunked.slot.B == 4 and got.shape[0] == 8
    assert engine._prompt_rows(enc, 2, 4)["pixel_values"].shape[0] == int(enc["image_grid_thw"][2:].prod(-1).sum())
