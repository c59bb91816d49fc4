"""engine.py -- a decode engine for Qwen2.5-VL and Qwen3-VL in plain PyTorch: rollouts at the speed of reading the weights.

Sampling one token for B rollouts reads every language-model weight once (a (B, H) x (H, H') matmul per
projection) plus each rollout's KV cache. At small B that is all a GPU does, so the floor of a decode step is

    t_floor = (bytes of LM weights + bytes of KV cache read) / memory bandwidth       (~1.6 ms for 3B in bf16)

and everything else -- Python, kernel launches, host syncs, copies -- is overhead above it. transformers'
`generate` pays a lot of it (a host sync every step for its stop check, a cache that concatenates itself,
a 4-D mask rebuilt per step, ~20 eager kernels of sampling). This engine does what fast decoders do:

    prefill    eagerly: the vision tower and the prompt through the model's own forward, once per PROMPT on CUDA
               (its K/V copied into the G rows of the prompt's group of a static, preallocated cache), once per
               ROLLOUT in the CPU's exact mode (item 5 below)
    step()     one token for all B rows, touching only preallocated buffers and with no host sync:
                 embed the last token -> per layer: RMSNorm, q/k/v (Qwen3-VL: then RMSNorm of each head
                 of q and k), RoPE, write k/v into the cache at
                 column P + n - 1, attention over the cache's first `length` columns (masked) -> norm ->
                 LM head -> vision tokens suppressed -> counter-keyed Gumbel noise -> argmax -> EOS bookkeeping
    the loop   on CUDA, step() is captured once per (batch, length bucket) in a CUDA graph and replayed (one
               launch per token instead of ~600); "are all rows done?" is read every `check_every` steps.
               On CPU the same step() runs eagerly and checks every step (a CPU has nothing to wait for).
    kept       the buffers (KV cache included) of the largest call so far and every graph captured on them stay
               between calls: a narrower or smaller call decodes in views of them, a wider one reallocates them
               with 25% spare columns (DecodeEngine's docstring has the bounds; `stats` counts it).

Exact: on CPU it gives the same tokens, bit for bit, as `rollout.generate` (transformers' generate with our
GumbelSampler), greedy and sampled, because every op mirrors what transformers runs (tests/test_engine.py):
  1. Sampling is the same function (`gumbel_scores`, shared with rollout.GumbelSampler): Gumbel-max with
     u = hash(rollout key, response position, vocab entry), so the noise needs no RNG state and the counter is
     the response position, read from a device tensor.
  2. mRoPE at decode time: a generated token is text, so its temporal/height/width positions are equal and
     mRoPE is plain RoPE at position (1 + the prompt's last token's) + n. An image of h x w merged patches
     holds h*w tokens but advances the position by only max(h, w): `rope_base` (Qwen2.5-VL report §2.1).
  3. Left padding: prompt columns are masked by the prompt's attention mask; response columns are attended
     by every row up to the current one (finished rows keep decoding pad tokens, as generate does).
  4. Attention: on CPU the engine calls transformers' own sdpa function, as generate does (with no mask when no
     row is padded, as generate has none then): its numerics depend on the version (5.2x packs the G query heads
     that share a KV head into one (G, D) query block, 5.4 repeats K/V per head; the two differ in the last bit).
     On CUDA it always packs the heads (K/V read once, never copied: repeat_kv would copy them G times).
  5. Prefill: generate prefills the G copies of each prompt, and a GEMM's rounding may depend on its row count
     (MKL's AVX2 sgemm rounds the last M mod 6 rows with another micro-kernel; its AVX-512 one does not at our
     sizes), so in the exact mode (hf_attention, the CPU default) the engine prefills the same G copies: the same
     shapes through the same ops give the same bits on every CPU. On CUDA, where bits are not claimed, each
     prompt is prefilled once and its K/V copied to its G rows, and its last hidden state is repeated to the G
     rows BEFORE the LM head, which then sees the batch generate gives it.
Where it departs from transformers: on CUDA, key lengths are rounded up to buckets of 128 (the extra columns
masked), attention packs the heads itself and "done?" is read every 8 steps -- run on the CPU, that layout decodes
generate's tokens (tested), not its bits; on the GPU, graph replay equals the uncaptured step bit for bit
(bench/decode.py checks it).

Weights: the engine decodes from `policy` itself when it can (fp32 training, one process or DDP). With bf16
training it decodes from a bf16 copy -- the bits autocast gives the training forward's matmuls -- and under
FSDP2 from a full copy gathered from the shards; `refresh()` (after each optimizer step) updates the copy in
place, so captured graphs stay valid. Decoding from a plain copy, ranks never wait for each other per token.

References: gpt-fast generate.py (static KV cache, decode step captured as a graph, prefill apart); nano-vllm
model_runner.py (CUDA graphs per batch-size bucket, sharing one memory pool); nanochat engine.py (prefill
once, then the KV cache cloned for every sample); transformers generation/utils.py `_sample`,
integrations/sdpa_attention.py `pack_gqa`, models/qwen2_5_vl `get_rope_index`. The PyTorch docs, "CUDA Graphs".
Run: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_engine.py`; `python bench/decode.py` (CPU, vs generate),
`python bench/decode.py --device cuda --config 3b` (GPU, vs the bandwidth floor).
"""
import collections
import copy

import torch

# --------------------------------------------------------------------------------------------------
# Counter-based Gumbel-max sampling (shared with rollout.GumbelSampler: one definition of the noise)
# --------------------------------------------------------------------------------------------------


def _signed(c):
    return c - (1 << 64) if c >= 1 << 63 else c  # a 64-bit odd constant as a torch int64


_MIX = [_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]


def hash_uniform(keys, position, vocab):
    """Counter-based uniforms in [0, 1): u[b, v] = hash(keys[b], position, v). No RNG state at all, so a
    rollout's sample depends only on its key -- not on batch size, padding, world size or call order.
    position: an int, or an int64 device tensor (the engine's step counter: reading it would sync the host).
    Mixing is splitmix64's finalizer on int64 (torch wraps on overflow; >> is arithmetic, which still mixes
    the low 53 bits we keep)."""
    v = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    pos = torch.as_tensor(position, device=keys.device, dtype=torch.int64)
    x = keys[:, None] * _MIX[0] + pos * _MIX[1] + v[None, :] * _MIX[2]                         # (B, vocab)
    for mult in (_MIX[1], _MIX[2], _MIX[0]):
        x = (x ^ (x >> 31)) * mult
    x = x ^ (x >> 29)
    return ((x & ((1 << 53) - 1)).double() / float(1 << 53)).clamp(1e-12, 1 - 1e-12)


def gumbel_scores(scores, keys, position, temperature=1.0, top_p=1.0):
    """Scores whose argmax is a sample of softmax(scores / temperature) (the Gumbel-max trick):
    scores / temperature + g, g = -log(-log u), u = hash_uniform(keys, position). top_p < 1 first masks the
    tail outside the nucleus (Holtzman et al. 2020): sorted descending, a token is kept while the mass before
    it is <= top_p, so the first token over top_p is kept.

    >>> s = gumbel_scores(torch.tensor([[0.0, 0.0, 50.0]]), torch.tensor([7]), 0)
    >>> int(s.argmax())   # almost all the mass is on token 2
    2
    """
    scores = scores.float() / temperature                                              # (B, vocab)
    if top_p < 1.0:
        sorted_scores, order = scores.sort(-1, descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_scores.softmax(-1) > top_p                           # keep the first over top_p
        scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    u = hash_uniform(keys.to(scores.device), position, scores.shape[-1])
    return scores - torch.log(-torch.log(u)).float()

# --------------------------------------------------------------------------------------------------
# Positions: where a response token sits in the 3-D rotary space (mRoPE; Qwen2.5-VL and Qwen3-VL alike)
# --------------------------------------------------------------------------------------------------


def rope_base(attention_mask, image_grid_thw, merge_size):
    """(P,) position of response token 0 of each prompt = 1 + the mRoPE position of the prompt's last token
    (text, so its temporal, height and width positions are equal; generate continues from it).

    Text tokens advance the position by 1 each; an image of h x w merged patches (h = grid_h / merge) spans
    positions [s, s + max(h, w)) on its height and width axes, so its h*w tokens advance it by max(h, w).
    One image per prompt, as rollout.encode_prompts builds them. Equals transformers' get_rope_index of
    both families (tested; Qwen3-VL interleaves the three axes over the frequencies, which changes nothing for a
    text token, whose three positions are equal).

    >>> rope_base(torch.tensor([[0, 1, 1, 1, 1, 1, 1]]), torch.tensor([[1, 4, 2]]), 2)  # 2 text + 2x1 image + 2 text
    tensor([6])
    """
    if (image_grid_thw[:, 0] != 1).any():
        raise ValueError("rope_base: one still image per prompt (grid t = 1); videos are not supported")
    h, w = image_grid_thw[:, 1] // merge_size, image_grid_thw[:, 2] // merge_size                 # (P,) each
    return attention_mask.sum(1) - h * w + torch.maximum(h, w)                                      # (P,)

# --------------------------------------------------------------------------------------------------
# Rows: a prompt's G copies, as generate prefills them (rollout.py uses these too)
# --------------------------------------------------------------------------------------------------


def pixel_rows(batch, index):
    """pixel_values rows of the samples in `index`. NOTE: rows are per image, not per sample: sample b owns
    image_grid_thw[b].prod() consecutive rows, so a plain pixel_values[index] would mix up images."""
    counts = batch["image_grid_thw"].prod(-1).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    return torch.cat([batch["pixel_values"][starts[b]:starts[b + 1]] for b in index])


def repeat_groups(enc, group_size):
    """Each encoded prompt G times in a row (rollout i -> prompt i // G), pixel rows repeated per image."""
    index = [b for b in range(len(enc["input_ids"])) for _ in range(group_size)]
    out = {k: enc[k][index] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    out["pixel_values"] = pixel_rows(enc, index)
    return out


# --------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


class _Slot:
    """Every buffer of the largest (batch B, cache capacity C) shape the engine has met, allocated once; a call of
    a smaller shape decodes in views of its first rows and columns (`view`), the same memory. The CUDA graphs
    captured on those views read and write these very tensors (graphs hold addresses), so they stay valid for as
    long as the slot lives, whatever the prompt width of the call."""

    def __init__(self, config, B, capacity, vocab, dtype, device):
        text = config.text_config
        kv_heads, head_dim = text.num_key_value_heads, _head_dim(text)
        shape = (B, kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(text.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(text.num_hidden_layers)]
        long = dict(dtype=torch.long, device=device)
        self.valid = torch.zeros(B, capacity, dtype=torch.bool, device=device)  # key column attendable (prompt mask)
        self.columns = torch.arange(capacity, **long)                             # (C,)
        self.base = torch.zeros(B, **long)                 # rope position of response token 0 (rope_base)
        self.keys = torch.zeros(B, **long)                 # sampling keys
        self.last = torch.zeros(B, **long)                 # the token fed to the next step
        self.out = torch.zeros(B, capacity, **long)        # response tokens, column n = response position n
        self.unfinished = torch.ones(B, dtype=torch.bool, device=device)
        self.n = torch.zeros(1, **long)                    # tokens emitted so far = response position of the next
        self.width = torch.zeros(1, **long)                # P, the prompt's column count (left-padded)
        self.pad = torch.zeros(1, **long)
        self.suppress = torch.zeros(vocab, dtype=torch.bool, device=device)  # vision tokens: never sampled
        self.is_eos = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.dense = False                                 # no mask at all: no padding, no masked column (CPU)
        self.B, self.capacity = B, capacity
        # (rows, length, temperature, top_p, dense) -> CUDAGraph, least recently used first; one memory pool for
        # all: they never run at once and keep their state in the buffers above, not in the pool (nano-vllm)
        self.graphs = collections.OrderedDict()
        self.pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None

    def view(self, B):
        """The first B rows of every per-row buffer (views), sharing the graphs, the pool and the rest."""
        if B == self.B:
            return self
        rows = copy.copy(self)
        rows.k, rows.v = [k[:B] for k in self.k], [v[:B] for v in self.v]
        for name in ("valid", "base", "keys", "last", "out", "unfinished"):
            setattr(rows, name, getattr(self, name)[:B])
        return rows

    def nbytes(self):
        """Bytes of the buffers (the KV cache and the per-row state; the graphs' pool is not counted here)."""
        tensors = [*self.k, *self.v] + [t for t in vars(self).values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


class DecodeEngine:
    """Prefill once per prompt, then one capturable step() per token over a static KV cache (see the module
    docstring). Build it once per run; call generate() per batch and refresh() after each optimizer step.

    policy: the Qwen2.5-VL or Qwen3-VL model being trained (or evaluated), as models/family.py loads it.
    dtype: the dtype to decode in; None = the policy's. A different dtype, or a sharded (FSDP2) policy, makes
        the engine decode from its own full copy, which refresh() keeps equal to the policy.
    bucket: key columns are attended in multiples of this (one CUDA graph per bucket); default 128 on CUDA,
        1 on CPU (exactly the columns written so far, as generate does).
    check_every: steps between reads of "are all rows done?" (a host sync); default 8 on CUDA, 1 on CPU.
    cuda_graphs: capture and replay step() on CUDA (False: run it eagerly, the reference for the graphs).
    hf_attention: attend through transformers' sdpa function (generate's bits); default on CPU, off on CUDA.
    max_rows: on CUDA, the most rows the KV cache holds: a call with more (an evaluation's k samples of 64
        questions) decodes whole prompts max_rows at a time, so the cache stays the rollout batch's size (train.py
        passes its rollouts per rank). None: no bound; ignored on a CPU (memory is the host's there, and one call
        keeps generate's bits).
    max_graphs: CUDA graphs kept (least recently used dropped first).

    What is kept between calls, and when it is rebuilt (`stats` counts both): one slot of buffers sized by the
    largest call so far (rows, and columns = prompt width + max_new_tokens rounded up to the bucket), used through
    views by every smaller call, and every graph captured on it, keyed by (rows, length bucket, temperature,
    top_p). A call wider than the slot reallocates it with 25% spare columns (a dataset's prompt widths then
    cost a few reallocations, not one per new width: tests/test_engine.py), and its graphs are captured again;
    the old slot is let go first, so the caching allocator hands its blocks to the new one (no empty_cache).
    So captures <= (rows, buckets, temperatures) met per slot, and slots <= 1 + log_1.25(widest / first width)
    + (times the rows grew). The slot stays allocated through the optimizer update: docs/performance.md counts it;
    `release()` frees it.
    """

    def __init__(self, policy, dtype=None, bucket=None, check_every=None, cuda_graphs=True, hf_attention=None,
                 max_rows=None, max_graphs=128):
        self.policy = policy
        first = next(policy.parameters())
        self.device = first.device
        self.dtype = dtype or first.dtype
        cuda = self.device.type == "cuda"
        self.bucket = bucket or (128 if cuda else 1)
        self.check_every = check_every or (8 if cuda else 1)
        self.cuda_graphs = cuda_graphs and cuda
        self.hf_attention = (not cuda) if hf_attention is None else hf_attention
        self.max_rows = max_rows if cuda else None
        self.max_graphs = max_graphs
        self.stats = {"slots": 0, "captures": 0, "graph_pool_bytes": 0}  # allocations, graphs captured, their pool
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        self.sdpa_attention = sdpa_attention_forward  # what the model's sdpa layers call
        self.qk_norm = _check_geometry(policy)  # Qwen3-VL: per-head q/k RMSNorm; decided once, not per step
        sharded = any(hasattr(p, "full_tensor") for p in policy.parameters())  # FSDP2 shards are DTensors
        self.model = policy
        if sharded or self.dtype != first.dtype:  # a plain full copy in the decode dtype, built on the device
            with torch.device(self.device):  # (buffers such as RoPE's inv_freq stay fp32, as from_pretrained has them)
                self.model = type(policy)._from_config(copy.deepcopy(policy.config), dtype=self.dtype,
                                                       attn_implementation="sdpa")  # not the policy's probe
            self.model.eval().requires_grad_(False)
            self.refresh()
        self.slot = None  # the buffers and graphs, kept between calls (_slot)

    @torch.no_grad()
    def refresh(self):
        """Copy the policy's current weights into the engine's copy, in place (the graphs keep their addresses).
        A no-op when the engine decodes from the policy itself. Under FSDP2 every rank must call it (it gathers)."""
        if self.model is self.policy:
            return
        mine = dict(self.model.named_parameters())
        for name, p in self.policy.named_parameters():
            full = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2: all-gather the shards
            mine[name].copy_(full)  # casts to the decode dtype: the bits autocast gives a bf16 matmul

    # ---------------------------------------------------------------------------------------- prefill

    @torch.no_grad()
    def _prefill(self, s, enc, group_size, keys, eos_ids, pad_id, suppress_ids):
        """The prompts through the model's own forward, once each; their K/V into the G rows of their group."""
        dev = self.device
        rows = torch.arange(len(enc["input_ids"])).repeat_interleave(group_size)   # (B,) the prompt of each row
        if self.hf_attention:  # exact mode: prefill what generate prefills, the G copies (docstring, item 5)
            enc, rows = repeat_groups(enc, group_size), torch.arange(len(rows))
        enc, rows = {k: v.to(dev) for k, v in enc.items()}, rows.to(dev)
        was_training = self.model.training
        self.model.eval()  # gradient checkpointing in train mode would turn the cache off
        try:
            out = self.model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                   pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
                                   mm_token_type_ids=enc["mm_token_type_ids"], use_cache=True)
        finally:
            self.model.train(was_training)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)  # renamed in transformers 5.x
        P = enc["input_ids"].shape[1]
        for i, layer in enumerate(cache.layers):
            s.k[i][:, :, :P].copy_(layer.keys[rows])
            s.v[i][:, :, :P].copy_(layer.values[rows])
        s.valid[:, :P].copy_(enc["attention_mask"][rows].bool())
        # generate attends without a mask when no prompt is padded: so do we, if no column is masked either
        s.dense = self.bucket == 1 and bool(enc["attention_mask"].all())
        s.valid[:, P:] = True  # response columns: masked by position in step(), not here
        merge = self.model.config.vision_config.spatial_merge_size
        s.base.copy_(rope_base(enc["attention_mask"], enc["image_grid_thw"], merge)[rows])
        s.keys.copy_(torch.as_tensor(keys if keys is not None else [0] * len(rows), dtype=torch.long))
        s.n.zero_()
        s.width.fill_(P)
        s.pad.fill_(pad_id)
        s.unfinished.fill_(True)
        s.suppress.zero_()
        s.suppress[suppress_ids] = True
        s.is_eos.zero_()
        s.is_eos[eos_ids] = True
        # NOTE: repeat the hidden state, not the logits: the LM head then multiplies B rows, as in generate
        return self.model.lm_head(out.last_hidden_state[rows, -1:])[:, -1]                   # (B, vocab)

    # ---------------------------------------------------------------------------------------- one step

    def _emit(self, s, logits, temperature, top_p):
        """Logits (B, vocab) -> the next token of every row, written into the buffers (generate's order:
        suppress vision tokens, Gumbel noise at the response position, argmax, pad the finished rows, EOS)."""
        scores = logits.float().masked_fill(s.suppress, float("-inf"))
        if temperature > 0:
            scores = gumbel_scores(scores, s.keys, s.n, temperature, top_p)
        token = torch.where(s.unfinished, scores.argmax(-1), s.pad)                            # (B,)
        s.out.index_copy_(1, s.n, token[:, None])
        s.unfinished &= ~s.is_eos[token]
        s.last.copy_(token)
        s.n += 1

    def _step(self, s, length, temperature, top_p):
        """Feed each row's last token (response position n - 1), emit token n. Only buffers are touched and
        nothing is read back to the host, so on CUDA this whole function is captured as one graph.
        length: key columns attended, >= P + n (the column written now + 1); shapes depend on it alone."""
        lm, B = self.model.model.language_model, len(s.last)
        write = s.width + s.n - 1                                                     # (1,) cache column
        x = lm.embed_tokens(s.last[:, None])                                          # (B, 1, hidden)
        # RoPE at the token's position: its t/h/w positions are equal, so mRoPE is 1-D RoPE here (note 2)
        position = (s.base + s.n - 1).float()                                         # (B,)
        freqs = position[:, None, None] * lm.rotary_emb.inv_freq.float()              # (B, 1, D/2)
        cos = torch.cat([freqs.cos(), freqs.cos()], -1).to(x.dtype)[:, None]          # (B, 1, 1, D)
        sin = torch.cat([freqs.sin(), freqs.sin()], -1).to(x.dtype)[:, None]
        # prompt columns by the prompt's mask, response columns up to the one written now
        mask = None if s.dense else (s.valid[:, :length] & (s.columns[:length] <= write))[:, None, None]  # (B,1,1,L)
        for layer, k_cache, v_cache in zip(lm.layers, s.k, s.v):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, 1, -1, attn.head_dim)                          # (B, 1, H, D)
            k = attn.k_proj(h).view(B, 1, -1, attn.head_dim)                          # (B, 1, H_kv, D)
            if self.qk_norm:  # Qwen3-VL: RMSNorm over D of each head of q and k, before RoPE, on this very view
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)                               # (B, H(_kv), 1, D)
            v = attn.v_proj(h).view(B, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            k_cache.index_copy_(2, write, k)
            v_cache.index_copy_(2, write, v)
            x = x + attn.o_proj(self._attend(attn, q, k_cache[:, :, :length], v_cache[:, :, :length], mask))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.model.lm_head(lm.norm(x))[:, -1]                                # (B, vocab)
        self._emit(s, logits, temperature, top_p)

    def _attend(self, attn, q, keys, values, mask):
        """Attention of each row's one query (B, H, 1, D) over its cached keys and values (B, H_kv, length, D),
        returned as (B, 1, H * D), the input of o_proj."""
        B, heads, _, head_dim = q.shape
        if self.hf_attention:  # transformers' own function: generate's bits on every version (note 4)
            return self.sdpa_attention(attn, q, keys, values, mask, scaling=attn.scaling)[0].reshape(B, 1, -1)
        # the G query heads of a KV head are one (G, D) query block: K/V are read once, never repeated
        o = torch.nn.functional.scaled_dot_product_attention(q.reshape(B, keys.shape[1], -1, head_dim), keys, values,
                                                             attn_mask=mask, scale=attn.scaling)  # (B, H_kv, G, D)
        return o.reshape(B, heads, 1, head_dim).transpose(1, 2).reshape(B, 1, -1)

    def _run_step(self, s, length, temperature, top_p):
        """step() eagerly (CPU, or cuda_graphs=False), or by replaying its graph for this bucket. A bucket's first
        step runs eagerly on a side stream (the warm-up CUDA graphs need: lazy cuBLAS/attention set-up) and is
        then captured; capture records the kernels without running them, so the state advances once."""
        if not self.cuda_graphs:
            return self._step(s, length, temperature, top_p)
        key = (len(s.last), length, temperature, top_p, s.dense)
        graph = s.graphs.get(key)
        if graph is not None:
            s.graphs.move_to_end(key)  # most recently used
            graph.replay()
            return
        s.graphs[key] = self._capture(s, length, temperature, top_p)
        self.stats["captures"] += 1
        if len(s.graphs) > self.max_graphs:
            s.graphs.popitem(last=False)  # the least recently used

    def _capture(self, s, length, temperature, top_p):
        """A CUDA graph of step() on these buffers, after one eager step on a side stream; advances the state once
        (the warm-up's step is the one emitted: capture records without running). Its pool's growth is counted."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step(s, length, temperature, top_p)
        torch.cuda.current_stream().wait_stream(side)
        before = torch.cuda.memory_reserved(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=s.pool):
            self._step(s, length, temperature, top_p)
        self.stats["graph_pool_bytes"] += torch.cuda.memory_reserved(self.device) - before
        return graph

    # ---------------------------------------------------------------------------------------- the loop

    def _slot(self, B, capacity):
        """Views of the kept slot's first B rows, for a call of `capacity` columns; a slot too small for the call
        is replaced by one with its rows and capacity (+25% spare columns beyond the old slot's, in buckets)."""
        old = self.slot
        if old is not None and B <= old.B and capacity <= old.capacity:
            return old.view(B)
        rows, columns = B, capacity
        if old is not None:  # growing: spare columns, so that slightly wider prompts fit next time
            rows = max(B, old.B)
            columns = old.capacity if capacity <= old.capacity else max(capacity, _round_up(old.capacity * 5 // 4,
                                                                                            self.bucket))
        del old
        self.release()  # NOTE: first, so the allocator can give the old slot's blocks to the new one
        vocab = self.model.config.text_config.vocab_size
        self.slot = _Slot(self.model.config, rows, columns, vocab, self.dtype, self.device)
        self.stats["slots"] += 1
        return self.slot.view(B)

    def reserve(self, rows, capacity):
        """Allocate the slot for (rows, capacity) now (known bounds: no reallocation later; bench/step.py)."""
        self._slot(rows, _round_up(capacity, self.bucket))

    def release(self):
        """Free the KV cache and the graphs (the next call allocates and captures them again)."""
        self.slot = None

    def memory(self):
        """Bytes the engine holds beside the policy: its weight copy (bf16 / FSDP2; 0 when decoding from the
        policy), the slot's buffers (the KV cache), the graphs' pool (CUDA), and the counts in `stats`."""
        copy_bytes = 0 if self.model is self.policy else sum(
            t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers()))
        return {"weight_copy_bytes": copy_bytes, "kv_cache_bytes": self.slot.nbytes() if self.slot else 0,
                "graphs": len(self.slot.graphs) if self.slot else 0, **self.stats}

    @torch.no_grad()
    def generate(self, enc, group_size, max_new_tokens, temperature, top_p, keys, eos_ids, pad_id, suppress_ids):
        """G responses to each of P encoded prompts (rollout.encode_prompts' dict, NOT repeated): rows
        p*G .. p*G + G - 1 answer prompt p. keys: one int per row (None when temperature is 0: greedy).

        Returns the tokens (B, n) on the CPU, n <= max_new_tokens columns: each row's response up to its first
        EOS, then pad tokens; rollout.generate turns them into (response, mask, truncated) as it does generate's.
        """
        prompts = len(enc["input_ids"])
        per_call = prompts if self.max_rows is None else max(1, self.max_rows // group_size)  # whole prompts
        if per_call < prompts:  # more rows than the cache holds: a chunk of prompts at a time
            parts = [self.generate(_prompt_rows(enc, i, i + per_call), group_size, max_new_tokens, temperature, top_p,
                                   None if keys is None else keys[i * group_size:(i + per_call) * group_size],
                                   eos_ids, pad_id, suppress_ids) for i in range(0, prompts, per_call)]
            width = max(part.shape[1] for part in parts)  # a chunk done early decoded pad tokens, as generate does
            return torch.cat([torch.nn.functional.pad(part, (0, width - part.shape[1]), value=pad_id)
                              for part in parts])
        P = enc["input_ids"].shape[1]
        B = prompts * group_size
        capacity = _round_up(P + max_new_tokens, self.bucket)
        s = self._slot(B, capacity)
        logits = self._prefill(s, enc, group_size, keys, eos_ids, pad_id, suppress_ids)
        self._emit(s, logits, temperature, top_p)                                       # response token 0
        emitted = 1
        while emitted < max_new_tokens:
            if emitted % self.check_every == 0 and not s.unfinished.any():  # the one host sync
                break
            self._run_step(s, min(capacity, _round_up(P + emitted, self.bucket)), temperature, top_p)
            emitted += 1
        return s.out[:, :emitted].to("cpu", copy=True)  # a copy: on a CPU .cpu() would hand out the buffer itself


def _prompt_rows(enc, start, stop):
    """Prompts start..stop-1 of rollout.encode_prompts' dict: their rows, and their images' patch rows."""
    patches = enc["image_grid_thw"].prod(-1).cumsum(0).tolist()  # end of each image's rows in pixel_values
    first, last = ([0] + patches)[start], ([0] + patches)[min(stop, len(patches))]
    return {k: v[first:last] if k == "pixel_values" else v[start:stop] for k, v in enc.items()}


def _head_dim(text_config):
    """D of the decoder's attention heads: Qwen3-VL states it (4B: 128, while hidden / heads = 80), Qwen2.5-VL
    implies hidden / heads -- each family's attention module reads its config by the same rule."""
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def _check_geometry(policy):
    """Whether the decoder normalises q and k per head (Qwen3-VL), after checking what _step takes for granted:
    the cache's head_dim is the attention modules', and RoPE is plain (unscaled) over all of head_dim. A model
    that breaks one would decode wrong tokens silently; it stops here instead."""
    lm = policy.model.language_model
    attn, rotary = lm.layers[0].self_attn, lm.rotary_emb
    D = _head_dim(policy.config.text_config)
    if attn.head_dim != D or rotary.inv_freq.numel() * 2 != D:
        raise ValueError(f"engine: head_dim {attn.head_dim} in the attention, {D} in the config and "
                         f"{rotary.inv_freq.numel() * 2} in RoPE: decode with --rollout hf")
    if getattr(rotary, "rope_type", "default") != "default" or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        raise ValueError(f"engine: RoPE {rotary.rope_type!r} with scaling {rotary.attention_scaling} is not the "
                         "plain RoPE the decode step computes: decode with --rollout hf")
    return hasattr(attn, "q_norm")


def _rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the last dim: RoPE's rotation by 90 degrees (transformers' rotate_half)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
