"""The attention probe: how strongly each generated token looks at the image.

AT-RL (arXiv 2602.11455) scales the advantage of a response's tokens by their cross-modal connectivity:
the attention a response token pays to the image tokens inside the LLM decoder. This file reads that
attention *inside a forward that already happens* and turns it into two tensors per rollout:

    patterns[b, t, v] = mean over selected layers l and heads h of  softmax_k(q_lh[i_t] . k_lh[k] * scale)[k = img_v]
    rho[b, t]         = debiased attention mass on image keys (sink keys dropped, row renormalised)

where i_t is the query row of response token t (position(t) - 1 for "predict", the row whose output predicts
token t; position(t) for "self") and img_v the position of the v-th image token of rollout b.

How: transformers 5.x routes every decoder attention through `AttentionInterface`. `probe(model)` registers
`atrl_probe_<impl>` (impl = the model's own kernel: sdpa, eager or flash_attention_*), which calls that
kernel unchanged and, on the selected decoder layers, recomputes only the armed rows from the post-RoPE q/k
it is handed: fp32, `no_grad`, chunked over rows, grouped-query heads as (kv_heads, groups) so repeated keys
are never materialised. Only (B, T, V) sums are kept, never a (B, H, S, S) map -- `output_attentions=True`
would keep layers x heads x S^2 floats, tens of GiB at 7B. Usually only the V + 1 columns kept are scored,
normalised by the log-sum-exp the kernel computed anyway (flash, efficient and cuDNN each lay it out their own
way); a kernel with none (math, eager), a layout not known, or one that fails its check (`lse_rejections`, warned
once) is read through whole rows, exact and slower, never an error. The arithmetic of both reads is in
ops/attention_rows.py, this file decides which rows and layers are read, and when.

Where we depart from / guess at the paper (each is a knob):
  1. Layers: the middle third of decoder depth by default (`layers=`); the paper does not say which. Chosen by
     measurement on the tiny Qwen2.5-VL (docs/departures.md); not measured on Qwen3-VL, whose DeepStack adds vision
     features to the hidden states of its first decoder layers (3 on the real models), so measure the band there.
  2. Heads and layers are averaged uniformly.
  3. Query alignment: `query="predict"` (row t-1) or `"self"` (row t); the paper does not say.
  4. Sink debiasing (`debias_sinks`): drop the first non-pad key and image keys whose mean attention over the
     response is > outlier_k x the median image key, then renormalise; the paper's rule is not public. outlier_k = 5
     is a guess and min_keys = 8 was set on the tiny Qwen2.5-VL's 2-token images; neither is measured on Qwen3-VL.

Dimension letters: B rollouts, S full sequence (prompt + response), T response tokens, V image tokens,
H query heads, Hkv key/value heads, G = H / Hkv query heads per key head, D head dim, c rows per chunk.

Use inside training (one forward that happens anyway, e.g. the old-log-prob forward of an RL step):

    query_pos = query_positions(response_mask, "predict")   # (B, T) rows to read, -1 = none
    with probe(model) as p:                                 # atrl_probe_sdpa on the decoder only
        p.arm(query_pos, input_ids == model.config.image_token_id)
        logits = model(**batch).logits                      # unchanged; the probe rides along
    raw = p.result()                                        # patterns (B, T, V), sink (B, T), image_valid (B, V)
    patterns, rho = debias_sinks(raw["patterns"], raw["sink"], raw["image_valid"], row_mask=query_pos >= 0)

Overlapped, as train.py runs it: `probe(model, background=True)` hands each probed layer's q/k (references,
no copies) to one worker thread that reads the rows, and `arm(..., then=fn)` queues fn(result) behind the last
layer's read -- there, the sink debiasing, kNN graph, Louvain and W -- so all of it runs while the training
thread finishes the forward. `outcome()` waits for fn and returns what it returned. The numbers are identical
(same ops in the same order, on another thread); tests/test_connectivity.py and tests/test_train.py check it.

Cost: the probe redoes, for T of the S rows and in fp32, the QK^T and softmax of each selected layer, so it costs
about (selected layers / L) x (T / S) x (the attention share of the forward); see bench/probe.py for measurements.

Limits (not handled, by design or for lack of a way to test here):
  - one rollout per batch row (no packed / varlen sequences); prefill without a KV cache only;
  - the flash-attention path is written but untested (no GPU with flash-attn on our machines);
  - a sliding-window layer reached through sdpa's is_causal path would be read as full causal
    (Qwen2.5-VL has no sliding-window layers); torch.compile'd models are untested.

Run the tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_connectivity.py`;
the cost: `python bench/probe.py` (tiny model on CPU; Qwen2.5-VL-3B shapes on GPU when one is present).
"""

import concurrent.futures
import contextlib
import sys
import warnings

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ops import attention_rows  # the arithmetic of the reads: column read with the kernel's lse, whole rows

PREFIX = "atrl_probe_"  # our implementation name is PREFIX + the model's own, e.g. atrl_probe_sdpa
_UNSET = object()  # "no mask seen yet" (None is a valid mask: sdpa's is_causal path)
_ACTIVE = {}  # id(attention module) -> Probe, for the selected decoder layers of every installed probe


# ----------------------------------------------------------------------------- positions


def _left_align(mask):
    """Positions of the True entries of each row of a (B, S) bool mask, left-aligned, -1 padded: (B, N)."""
    B, S = mask.shape
    N = int(mask.sum(1).max()) if B > 0 and S > 0 else 0
    slot = mask.long().cumsum(dim=1) - 1  # (B, S) where each True entry goes in its row
    rows, positions = mask.nonzero(as_tuple=True)  # (n,), (n,) in row-major order
    aligned = torch.full((B, N), -1, dtype=torch.long, device=mask.device)  # (B, N)
    aligned[rows, slot[rows, positions]] = positions  # cheaper than argsort (~0.6 ms on CPU for (8, 78))
    return aligned


def default_layers(num_layers):
    """Middle third of the decoder, at least one layer.

    >>> list(default_layers(36)), list(default_layers(4))
    ([12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], [1, 2])
    """
    lo, hi = num_layers // 3, -(-2 * num_layers // 3)  # hi = ceil(2L/3)
    return range(lo, max(hi, lo + 1))


def layer_band(name, num_layers):
    """Decoder layers by name: "early" / "middle" / "late" third, "all", or a comma list such as "4,5,6".

    The thirds split at floor(L/3) and ceil(2L/3), each at least one layer.
    >>> [list(layer_band(b, 4)) for b in ("early", "middle", "late", "all", "0,3")]
    [[0], [1, 2], [3], [0, 1, 2, 3], [0, 3]]
    """
    lo, hi = num_layers // 3, -(-2 * num_layers // 3)
    if name == "early":
        return range(0, max(lo, 1))
    elif name == "middle":
        return default_layers(num_layers)
    elif name == "late":
        return range(min(hi, num_layers - 1), num_layers)
    elif name == "all":
        return range(num_layers)
    try:
        layers = sorted({int(x) for x in name.split(",")})
    except ValueError:
        raise ValueError(f"layer band {name!r}: use early, middle, late, all or a comma list like 4,5,6") from None
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise ValueError(f"layer band {name!r}: layers must lie in [0, {num_layers})")
    return layers


def query_positions(response_mask, query="predict"):
    """Query row for every response token, response tokens left-aligned, -1 where none: (B, T).

    "self" reads token t's own row; "predict" reads the row at position(t) - 1, whose output predicts t.

    >>> m = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    >>> query_positions(m, "self").tolist(), query_positions(m).tolist()
    ([[2, 3, -1, -1], [1, 2, 3, 4]], [[1, 2, -1, -1], [0, 1, 2, 3]])
    """
    if query not in ("predict", "self"):
        raise ValueError(f"query={query!r}: use 'predict' (row t-1 predicts token t) or 'self' (row t)")
    positions = _left_align(response_mask.bool())  # (B, T)
    if query == "predict":
        # a response can never start at position 0 (a prompt precedes it); keep -1 as "none" anyway
        positions = torch.where(positions > 0, positions - 1, -1)  # (B, T)
    return positions


# ----------------------------------------------------------------------------- the probe


class Probe:
    """Accumulates head/layer-mean attention rows of armed queries over image keys: (B, T, V) and sink (B, T).

    `arm` before a forward, `result` after it. Each selected layer is captured at most once per `arm`, so a
    gradient-checkpointing re-run of the layer (or a second forward on the same batch, e.g. the next PPO
    epoch) costs nothing and changes nothing. Call `arm` again for every new batch / micro-batch.
    """

    def __init__(self, layers, chunk_elements=None, background=False):
        self.layers = tuple(layers)  # decoder layer indices that are read
        # fp32 scores per chunk (x2 with the probabilities). None: 2**18 (1 MiB, cache-sized: fastest in
        # bench/probe.py on CPU) on CPU, 2**23 (32 MiB, fewer kernel launches; a guess, untested) on GPU
        self.chunk_elements = chunk_elements
        # background: the rows are read on one worker thread while the forward goes on (see `arm`)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "atrl-probe") if background else None
        self.captures = 0  # layers captured since the last arm (tests and logs read it)
        # layers read through whole rows (the kernel gave no usable log-sum-exp), of those how many because a
        # kernel's log-sum-exp failed its check (once per kernel) or came in a layout we do not know (per layer);
        # counted over the probe's life; tests, bench/probe.py and train.py's log read them
        self.row_reads = self.lse_mismatches = self.lse_unusable = 0
        self._lse_trusted = {}  # (kernel, dtype, device type) -> did its log-sum-exp pass the check
        self.lse_rejections = {}  # (kernel, dtype, device type) -> why its log-sum-exp was not used (warned once)
        self.kernels = set()  # names of the attention kernels (aten ops) the probed layers ran; None: no fused one
        self.use_kernel_lse = True  # False: always read whole rows (the reference; bench/probe.py times both)
        self._armed = False
        self._jobs, self._then, self._outcome = [], None, None

    def arm(self, query_pos, image_mask, attention_mask=None, then=None):
        """query_pos (B, T) long, -1 = no row; image_mask (B, S) bool; attention_mask (B, S) optional.

        The probe reads the mask the kernel itself is handed (sdpa/eager: 4-D; flash: 2-D). attention_mask is a
        safety net, used only for the padding of layers whose kernel is handed no mask at all (transformers
        does that only when there is no padding).

        then: optional fn(result dict) -> anything, run (no grad) as soon as the last selected layer is read,
        i.e. while the forward is still under way; `outcome()` returns what it returned. With a background
        probe both the reading and `then` run on the worker thread, so work such as train.py's graph + Louvain
        overlaps the rest of the forward (all the layers after the last selected one, the vocabulary
        projection, the log-softmax) instead of following it.
        """
        if query_pos.dim() != 2 or image_mask.dim() != 2 or query_pos.shape[0] != image_mask.shape[0]:
            raise ValueError(f"arm expects query_pos (B, T) and image_mask (B, S); got "
                             f"{tuple(query_pos.shape)} and {tuple(image_mask.shape)}")
        concurrent.futures.wait(self._jobs + [self._outcome] * (self._outcome is not None))  # last arm's work
        self._query_pos = query_pos.long()  # (B, T)
        image_pos = _left_align(image_mask.bool())  # (B, V)
        self._image_index = image_pos.clamp(min=0)  # (B, V) gather index, padding points at key 0
        self.image_valid = image_pos >= 0  # (B, V)
        self._key_valid = None if attention_mask is None else attention_mask.bool()  # (B, S)
        self._seq_len = image_mask.shape[1]
        self._patterns = self._sink = None  # allocated on the device of the first captured layer
        self._done = set()
        self._mask_source, self._mask_rows = _UNSET, {}  # per-arm cache of the mask rows, see _read
        self._chunks = None  # [(first row, rows, keys)] per chunk, set by the first captured layer
        self.captures = self._reads = 0
        self._jobs, self._then, self._outcome = [], then, None
        self._armed = True

    def disarm(self):
        """Stop capturing (results stay readable)."""
        self._armed = False

    def close(self):
        """Finish pending work and stop the worker thread (probe() does this on exit)."""
        self.disarm()
        if self._worker is not None:
            self._worker.shutdown(wait=True)

    def result(self):
        """dict(patterns (B, T, V) fp32, sink (B, T) fp32, image_valid (B, V) bool), means over captured layers."""
        for job in self._jobs:  # background: wait for the reads (and re-raise their errors); on the worker
            job.result()        # itself they are already done -- it runs jobs in order
        if self.captures == 0:
            raise RuntimeError(f"the probe on layers {list(self.layers)} captured nothing: call arm(), then run the "
                               "forward inside the `with probe(model)` block on exactly the armed (B, S) batch")
        row_valid = (self._query_pos >= 0).to(self._sink.device)  # (B, T)
        image_valid = self.image_valid.to(self._sink.device)  # (B, V)
        n = self.captures * self._heads  # the reads add up every head of every captured layer
        patterns = self._patterns / n * row_valid[:, :, None] * image_valid[:, None, :]  # (B, T, V)
        sink = self._sink / n * row_valid  # (B, T)
        return dict(patterns=patterns, sink=sink, image_valid=image_valid)

    def outcome(self):
        """What arm's `then` returned for the forward that just ran (waits for it; re-raises its errors)."""
        if self._outcome is None:
            raise RuntimeError(f"the probe read {self.captures} of its {len(self.layers)} layers and `then` never "
                               "ran: pass then= to arm(), and run the whole forward on exactly the armed batch")
        return self._outcome.result()

    def _run_then(self):
        with torch.no_grad(), torch.autocast(self._sink.device.type, enabled=False):
            return self._then(self.result())

    def _wants(self, module, query, key):
        """Is this attention call one to read? The prefill of the armed batch, each selected layer once: decode
        steps (S == 1), other batches, cached prefixes and gradient-checkpointing re-runs pass through."""
        B, S, K = query.shape[0], query.shape[2], key.shape[2]
        return (self._armed and module.layer_idx not in self._done and S > 1 and K == S
                and S == self._seq_len and B == self._query_pos.shape[0])

    def _capture(self, module, query, key, attention_mask, scaling, lse=None, kernel=None):
        """Read one selected layer now (or queue it for the worker); its attention kernel has just run, and
        `_wants` said this call is one to read.

        query (B, H, S, D), key (B, Hkv, K, D) post-RoPE, attention_mask as the kernel received it, lse the
        kernel's row log-sum-exp in its own layout (attention_rows.canonical_lse) or None, kernel the aten op's name.
        """
        self._done.add(module.layer_idx)  # NOTE: before any work, so a checkpoint re-run is skipped
        self.captures += 1
        self.kernels.add(kernel)
        # NOTE: detach() shares storage, nothing is copied; the kernel does not write to q or k, and a training
        # forward keeps them for the backward anyway
        job = (query.detach(), key.detach(), attention_mask, scaling, None if lse is None else lse.detach(), kernel)
        if self._worker is None:
            self._read(*job)
        else:
            self._jobs.append(self._worker.submit(_on_device, query.device, self._read, *job))
        if self.captures == len(self.layers) and self._then is not None:  # the last selected layer: go on
            if self._worker is None:
                self._outcome = concurrent.futures.Future()
                try:
                    self._outcome.set_result(self._run_then())
                except Exception as error:  # kept for outcome(), as the worker would
                    self._outcome.set_exception(error)
            else:  # runs after the reads: one worker, jobs in order
                self._outcome = self._worker.submit(_on_device, query.device, self._run_then)

    def _read(self, query, key, attention_mask, scaling, lse=None, kernel=None):
        """The armed rows of one layer -> running sums in _patterns / _sink (on the worker if background)."""
        B, H, S, D = query.shape
        device = query.device
        if self._patterns is None:  # first captured layer of this arm: move the armed indices once
            self._query_pos = self._query_pos.to(device)  # (B, T)
            self._image_index = self._image_index.to(device)  # (B, V)
            self._patterns = torch.zeros(self._query_pos.shape + self._image_index.shape[1:], device=device)
            self._sink = torch.zeros(self._query_pos.shape, device=device)  # (B, T) fp32 sums over layers
            self._rows = self._query_pos.clamp(min=0)  # (B, T) rows without a query read row 0, zeroed in result()
            self._heads = H  # the reads sum over query heads; result() divides
        scale = scaling if scaling is not None else D**-0.5
        # all full-attention layers share one mask object: slice its rows once per arm, not once per layer
        if self._mask_source is not attention_mask:
            self._mask_source, self._mask_rows = attention_mask, {}
        # NOTE: autocast off, or a bf16 training step would silently run our "fp32" matmul in bf16
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            if kernel is None or not self.use_kernel_lse or not self._read_columns(query, key, attention_mask, scale,
                                                                                 lse, kernel):
                self.row_reads += 1
                self._read_rows(query, key, attention_mask, scale)
        self._reads += 1
        if self._reads == len(self.layers):  # all layers read: let the mask and its row slices go
            self._mask_source, self._mask_rows = _UNSET, {}

    def _read_columns(self, query, key, attention_mask, scale, lse, kernel):
        """The fast read (attention_rows.read_columns), if the kernel's log-sum-exp is usable and trusted; else
        nothing is read and False is returned (the caller reads whole rows), the reason kept in `lse_rejections`.

        Usable: its layout is one canonical_lse knows (flash, efficient's padding, cuDNN's (B, H, S, 1)); an
        empty or unknown one fails this layer only (`lse_unusable`). Trusted: the first time the probe meets a
        kernel (with a dtype), its lse is checked against a whole-row log-sum-exp of our own on one row per rollout
        (one host sync); if they disagree, or the check itself fails, that kernel's layers are read through whole
        rows from then on (`lse_mismatches` counts it)."""
        B, H, S, D = query.shape
        Hkv, K = key.shape[1], key.shape[2]
        row_valid = self._query_pos >= 0  # (B, T)
        if "columns" not in self._mask_rows:  # per arm: the keys to score and the row to check
            last = self._rows.max(dim=1, keepdim=True).values  # (B, 1) each rollout's last response row
            hidden, first = attention_rows.row_mask(attention_mask, last, K, H, Hkv, H // Hkv, self._key_valid)
            self._mask_rows["columns"] = (torch.cat([self._image_index, first], dim=1), last, hidden)  # (B, V + 1)
        columns, last, hidden = self._mask_rows["columns"]
        verdict = (kernel, query.dtype, query.device.type)
        lse, why = attention_rows.canonical_lse(lse, B, H, S)  # (B, H, S) fp32 from the kernel's own layout
        if lse is None:  # an empty or unknown layout: whole rows for this layer (not a verdict on the kernel)
            self.lse_unusable += 1
            self._reject(verdict, why)
            return False
        if verdict not in self._lse_trusted:
            try:
                trusted = attention_rows.lse_agrees(query, key, scale, lse, last, hidden, row_valid)
                why = "its log-sum-exp differs from a whole-row one of our own (another base or layout?)"
            except Exception as error:  # NOTE: a surprise in the check costs speed (whole rows), never a step
                trusted, why = False, f"the check raised {type(error).__name__}: {str(error)[:200]}"
            self._lse_trusted[verdict] = trusted
            if not trusted:
                self.lse_mismatches += 1
                self._reject(verdict, why)
        if not self._lse_trusted[verdict]:
            return False
        # fp32 scores per chunk. CPU: 2^20 (4 MiB) measured best on the tiny long shape (2^18: +30% time);
        # GPU: 2^24 (64 MiB), a few chunks per layer at 3B shapes (fewer kernel launches; a guess, unmeasured)
        budget = self.chunk_elements or (2**24 if query.device.type == "cuda" else 2**20)
        attention_rows.read_columns(query, key, scale, lse, self._rows, row_valid, columns, budget, self._patterns,
                                    self._sink)
        return True

    def _reject(self, verdict, why):
        """Keep (and warn once about) why a kernel's log-sum-exp was not used; the layer is read through rows."""
        if verdict not in self.lse_rejections:
            kernel, dtype, device = verdict
            warnings.warn(f"attention probe: {kernel} ({dtype}, {device}): {why}; reading whole rows instead "
                          "(exact, slower)", stacklevel=2)
        self.lse_rejections[verdict] = why

    def _read_rows(self, query, key, attention_mask, scale):
        """The whole-row read (attention_rows.read_rows); its row chunks and their masks are the same for every
        layer of this arm, so they are made once."""
        H, Hkv, K = query.shape[1], key.shape[1], key.shape[2]
        if self._chunks is None:
            budget = self.chunk_elements or (2**23 if query.device.type == "cuda" else 2**18)
            self._chunks = attention_rows.row_chunks(self._rows, self._image_index, H, K, budget)
        for t0, c, K in self._chunks:
            if t0 not in self._mask_rows:
                self._mask_rows[t0] = attention_rows.row_mask(attention_mask, self._rows[:, t0:t0 + c], K, H, Hkv,
                                                              H // Hkv, self._key_valid)
        attention_rows.read_rows(query, key, scale, self._rows, self._image_index, self._chunks, self._mask_rows,
                                 self._patterns, self._sink)


def _on_device(device, fn, *args):
    """Run fn on the worker thread with `device` as its current CUDA device (a thread starts on cuda:0, and
    under torchrun this rank's GPU may be another). Work is queued on that device's default stream, the
    training thread's stream, so it is ordered after the kernels that produced q and k."""
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        return fn(*args)


def _attention_with_probe(implementation):
    """The function registered as PREFIX + implementation: the model's own kernel, plus the probe's read."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if implementation in ALL_ATTENTION_FUNCTIONS:
            kernel = ALL_ATTENTION_FUNCTIONS[implementation]
        else:  # "eager" lives in each model's own file, not in the global interface
            kernel = sys.modules[type(module).__module__].eager_attention_forward
        # the vision tower keeps its own implementation; unselected layers are not in _ACTIVE
        probe_for_module = _ACTIVE.get(id(module))
        if probe_for_module is None or not probe_for_module._wants(module, query, key):
            return _call(kernel, implementation, module, query, key, value, attention_mask, *args, **kwargs)
        with attention_rows.KernelLogSumExp() as spy:  # the kernel runs as it would have; its row log-sum-exp is kept
            out = _call(kernel, implementation, module, query, key, value, attention_mask, *args, **kwargs)
        probe_for_module._capture(module, query, key, attention_mask, kwargs.get("scaling"), spy.lse, spy.kernel)
        return out

    return attention


def _call(kernel, implementation, module, query, key, value, attention_mask, *args, **kwargs):
    if "flash" not in implementation:
        return kernel(module, query, key, value, attention_mask, *args, **kwargs)
    # NOTE: transformers' flash path picks its kernel package from module.config._attn_implementation,
    # which reads our name here: show it the original name for the duration of the call.
    # (Untested: no flash-attn on our CPU machines.)
    config = module.config
    ours, config._attn_implementation_internal = config._attn_implementation_internal, implementation
    try:
        return kernel(module, query, key, value, attention_mask, *args, **kwargs)
    finally:
        config._attn_implementation_internal = ours


def _set_text_attention(model, text_config, implementation):
    """Switch only the language model's attention (the vision tower keeps its own)."""
    if text_config is model.config:
        model.set_attn_implementation(implementation)
        return
    for name in model.config.sub_configs:
        if getattr(model.config, name, None) is text_config:
            model.set_attn_implementation({name: implementation})
            return
    raise ValueError(f"{type(model).__name__}: cannot find the sub-config holding the text model")


@contextlib.contextmanager
def probe(model, layers=None, chunk_elements=None, background=False):
    """Install the probe on `model`'s decoder layers `layers` (None = middle third); yields a `Probe`.

    chunk_elements bounds the probe's extra memory: ~2 x 4 bytes x chunk_elements (fp32 scores + probabilities);
    None picks a per-device default (see Probe). background=True reads the rows (and runs arm's `then`) on a
    worker thread, overlapping the rest of the forward; the numbers are the same bit for bit.

    The model's attention implementation is restored on exit, also after an exception; a probe never exited
    (entered by hand with __enter__) is left alone when the interpreter finalises it at exit.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    text_config = model.config.get_text_config()
    num_layers = text_config.num_hidden_layers
    layers = list(default_layers(num_layers)) if layers is None else sorted({int(i) for i in layers})
    if not layers or not all(0 <= i < num_layers for i in layers):
        raise ValueError(f"layers={layers}: pick decoder layers in [0, {num_layers}) or None for the middle third")
    original = text_config._attn_implementation
    if original is None or original.startswith(PREFIX):
        raise RuntimeError(f"attention implementation is {original!r}: a probe is already installed on this model")
    if original not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(f"the probe wraps sdpa, eager or flash_attention_*; this model uses {original!r}")
    # decoder self-attention modules: carry the text config and a layer index (the vision tower has neither)
    modules = [m for m in model.modules() if getattr(m, "config", None) is text_config
               and getattr(m, "layer_idx", None) in layers and getattr(m, "is_causal", False)]
    if len(modules) != len(layers):
        raise RuntimeError(f"found {len(modules)} decoder attention modules for layers {layers}; "
                           f"{type(model).__name__} is not laid out like Qwen2.5-VL / Qwen3-VL")
    # registering the mask function too matters: masking_utils builds NO mask for names it does not know
    name = PREFIX + original
    AttentionInterface.register(name, _attention_with_probe(original))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    result = Probe(layers, chunk_elements, background)
    _set_text_attention(model, text_config, name)
    _ACTIVE.update({id(m): result for m in modules})
    try:
        yield result
    finally:
        # NOTE: _ACTIVE is None only when interpreter teardown finalises a probe that nobody exited (module
        # globals are cleared by then): the process is ending, and there is nothing left to restore
        if _ACTIVE is not None:
            for m in modules:
                _ACTIVE.pop(id(m), None)
            _set_text_attention(model, text_config, original)
            result.close()


# ----------------------------------------------------------------------------- sink debiasing


def debias_sinks(patterns, sink, image_valid, outlier_k=5.0, enabled=True, row_mask=None, min_keys=8):
    """Drop attention sinks and renormalise: (patterns (B, T, V) rows summing to 1 over kept keys, rho (B, T)).

    Sinks are the first non-pad key (`sink`, already outside `patterns`) and image keys whose mean attention
    over the response's rows exceeds `outlier_k` x the median image key of that rollout (torch's median: the
    lower middle value). Let a = the raw row, s = sink + mass on outlier keys:
        rho[t]      = (sum of a over kept image keys) / (1 - s)      (attention mass on the image, sinks removed)
        patterns[t] = a on kept image keys / their sum                (a distribution over the image)
    Images of fewer than `min_keys` tokens are not screened for outlier keys (too few keys to call one an
    outlier). `enabled=False` drops nothing (rho = raw image mass). Rows without a query (row_mask False;
    default: rows with any attention) and rows with zero image mass come back as zeros.

    >>> p = torch.tensor([[[0.10, 0.05, 0.05, 0.30], [0.02, 0.02, 0.06, 0.40]]])  # key 3: mean 0.35 > 5 x 0.055
    >>> d, rho = debias_sinks(p, torch.tensor([[0.3, 0.2]]), torch.ones(1, 4, dtype=torch.bool), min_keys=4)
    >>> (100 * d).round().tolist(), (100 * rho).round().tolist()  # in percent
    ([[[50.0, 25.0, 25.0, 0.0], [20.0, 20.0, 60.0, 0.0]]], [[50.0, 25.0]])
    """
    if row_mask is None:
        row_mask = (sink > 0) | (patterns.sum(-1) > 0)  # (B, T)
    row_mask = row_mask.bool()
    keep = image_valid.bool()[:, None, :].expand_as(patterns)  # (B, T, V)
    dropped = torch.zeros_like(sink)  # (B, T) mass removed from the row's denominator
    if enabled:
        rows = row_mask[..., None].to(patterns.dtype)  # (B, T, 1)
        col_mean = (patterns * rows).sum(1) / rows.sum(1).clamp(min=1)  # (B, V) mean over the response's rows
        median = col_mean.masked_fill(~image_valid.bool(), float("nan")).nanmedian(dim=1).values  # (B,)
        outlier = image_valid.bool() & (col_mean > outlier_k * median[:, None])  # (B, V); NaN median: none
        # NOTE: with a handful of image keys "outlier" is meaningless (with 2 keys, one legitimately read
        # digit slot would be called a sink), so only images of >= min_keys tokens are screened
        outlier &= (image_valid.sum(1) >= min_keys)[:, None]
        keep = keep & ~outlier[:, None, :]
        dropped = sink + (patterns * outlier[:, None, :]).sum(-1)  # (B, T)
    kept = patterns * keep  # (B, T, V)
    mass = kept.sum(-1)  # (B, T)
    rho = (mass / (1 - dropped).clamp(min=1e-6)).clamp(0, 1) * row_mask  # (B, T)
    distribution = kept / mass.clamp(min=1e-30)[..., None] * row_mask[..., None]  # (B, T, V)
    return distribution, rho


# ----------------------------------------------------------------------------- one-call analysis


def image_attention(model, inputs, response_mask, layers=None, query="predict", sink_debias=True, outlier_k=5.0):
    """One no-grad forward with the probe: (patterns (B, T, V), density rho (B, T)) for analysis and tests.

    inputs: the model's forward kwargs (input_ids (B, S), attention_mask, pixel_values, image_grid_thw,
    mm_token_type_ids); response_mask (B, S) bool marks the response tokens.
    """
    query_pos = query_positions(response_mask, query)  # (B, T)
    image_mask = inputs["input_ids"] == model.config.image_token_id  # (B, S)
    with probe(model, layers) as p, torch.no_grad():
        p.arm(query_pos, image_mask, inputs.get("attention_mask"))
        model(**inputs, use_cache=False, logits_to_keep=1)  # logits of one position: skip the vocab projection
        raw = p.result()
    return debias_sinks(raw["patterns"], raw["sink"], raw["image_valid"], outlier_k=outlier_k,
                        enabled=sink_debias, row_mask=query_pos.to(raw["sink"].device) >= 0)
