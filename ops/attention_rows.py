"""ops/attention_rows.py -- the arithmetic behind the probe: softmax probabilities of some attention rows at some keys.

connectivity.py decides which rows and layers to read and when; this file computes, for the armed rows i of
one layer (post-RoPE q, k; B rollouts, H query heads in Hkv groups of G, D head dim, K keys),

    p[i, k] = softmax_k(q_i . k_k * scale + mask[i, k])           summed over heads, at the V image keys + 1 sink

in one of two ways:

    read_columns   the fast read: scores only at the V + 1 keys kept, normalised with the row's log-sum-exp that
                   the fused attention kernel computed anyway, p = exp(q . k * scale - lse). No mask (image and
                   sink keys are visible from every response row) and no pass over the row's other keys.
    read_rows      the reference: QK^T and softmax over each row's visible keys, then the V + 1 columns kept.
                   For kernels that give no log-sum-exp (eager, math, flash-attn's package) and for a
                   log-sum-exp that fails `lse_agrees`.

and says which kernel ran (KernelLogSumExp, a dispatch mode around sdpa's call that keeps the kernel's
log-sum-exp, asking for it where the kernel computes it only on request).

Both reads run in fp32 with autocast off (the caller's job), chunked over rows so the score block stays within
`budget` elements; both add into the caller's running sums (patterns (B, T, V), sink (B, T)). GQA: query head h
uses key head h // G (transformers' repeat_kv order), so (Hkv, G) groups the query heads by their key head and
one matmul per key head serves its G query heads; repeated keys are never materialised.

Tests: tests/test_connectivity.py (the probe against eager attention, through both reads).
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

MASK_MIN = torch.finfo(torch.float32).min  # "minus infinity" that keeps fully-masked rows finite (no NaN)


def row_mask(attention_mask, rows, K, H, Hkv, G, key_valid=None):
    """The kernel's mask at rows (B, c) -> (hidden, first).

    hidden broadcasts to scores (B, Hkv, G, c, K): bool "hidden" for sdpa/flash masks, or eager's additive float
    mask (0 visible, dtype-min hidden); first (B, c) is each row's first visible key (the sink: the first
    non-pad token). key_valid (B, K) marks padding keys when the kernel was handed no 4-D mask.
    """
    B, c = rows.shape
    if attention_mask is not None and attention_mask.dim() == 4:
        # sdpa/eager: the exact mask the kernel uses, (B or 1, 1 or H, S, K); take our rows only
        Hm = attention_mask.shape[1]
        mask = attention_mask[..., :K].expand(B, Hm, -1, K)  # (B, Hm, S, K), a view
        batch = torch.arange(B, device=rows.device)[:, None]  # (B, 1)
        # advanced indexing, not gather: ~25x faster on CPU for this shape
        picked = mask.transpose(1, 2)[batch, rows].transpose(1, 2)  # (B, Hm, c, K)
        picked = picked.reshape(B, Hkv, G, c, K) if Hm == H else picked.reshape(B, 1, 1, c, K)
        if picked.dtype == torch.bool:
            visible, hidden = picked[:, 0, 0], ~picked  # (B, c, K), (B, 1|Hkv, 1|G, c, K)
        else:
            visible, hidden = picked[:, 0, 0] == 0, picked.float().clamp(min=MASK_MIN)
    else:
        # sdpa's is_causal path (no padding, mask None) or flash-attention's 2-D padding mask:
        # causal (key k visible from row i iff k <= i) and padding keys hidden
        keys = torch.arange(K, device=rows.device)  # (K,)
        visible = keys[None, None, :] <= rows[:, :, None]  # (B, c, K)
        key_valid = attention_mask if attention_mask is not None else key_valid  # (B, K) or None
        if key_valid is not None:
            visible = visible & key_valid.to(rows.device).bool()[:, None, :K]
        hidden = ~visible.view(B, 1, 1, c, K)
    first = visible.to(torch.uint8).argmax(dim=-1)  # (B, c) first visible key = first non-pad token
    return hidden, first


def canonical_lse(lse, B, H, S):
    """A fused kernel's row log-sum-exp -> (lse (B, H, S) fp32, None), or (None, why) for a layout we do not know.

    Known layouts (torch/_meta_registrations.py, torch 2.13; the aten ops in LSE_KERNELS):
        (B, H, S)         flash (CPU: strides of a (B, S, H) buffer; CUDA), overrideable, cuDNN before ~2.5
        (B, H, S' >= S)   efficient (mem-eff): the query dimension padded to a multiple of 32; the tail is garbage
        (B, H, S, 1)      cuDNN (any strides: its "ragged" mode allocates it (B, S, H, 1) and transposes)
    An empty one (a kernel asked for no lse: compute_log_sumexp=False gives (B, H, 0)), a varlen (H, total) one or
    any other shape is refused, never guessed at: the probe then reads whole rows. A layout that fits these shapes
    but means something else (another base, rows permuted) is what lse_agrees is for.

    >>> lse = torch.zeros(2, 3, 5)
    >>> [canonical_lse(x, 2, 3, 5)[0].shape for x in (lse, lse[..., None], torch.zeros(2, 3, 32))]
    [torch.Size([2, 3, 5]), torch.Size([2, 3, 5]), torch.Size([2, 3, 5])]
    >>> canonical_lse(lse[..., :0], 2, 3, 5)[1], canonical_lse(lse.transpose(1, 2), 2, 3, 5)[1]
    ('no log-sum-exp (empty)', 'log-sum-exp of shape (2, 5, 3), not (B, H, S) = (2, 3, 5) or a known padding of it')
    """
    if not isinstance(lse, torch.Tensor):
        return None, "no log-sum-exp"
    if lse.numel() == 0:
        return None, "no log-sum-exp (empty)"
    shape = tuple(lse.shape)
    if lse.dim() == 4 and shape[-1] == 1:  # cuDNN: (B, H, S, 1)
        lse = lse.squeeze(-1)
    if lse.dim() != 3 or lse.shape[0] != B or lse.shape[1] != H or lse.shape[2] < S:
        return None, f"log-sum-exp of shape {shape}, not (B, H, S) = {(B, H, S)} or a known padding of it"
    return lse[..., :S].float(), None  # a view when it is fp32 already (every kernel's lse dtype for bf16/fp16)


def lse_agrees(query, key, scale, lse, last, hidden, row_valid):
    """Does the kernel's lse (B, H, S) equal a whole-row log-sum-exp of our own, on each rollout's last row (B, 1)?
    Guards against a kernel whose lse means something else (another base, layout or padding) on some version."""
    B, H, S, D = query.shape
    Hkv, K, G = key.shape[1], key.shape[2], H // key.shape[1]
    q_last = query.gather(2, last[:, None, :, None].expand(B, H, 1, D)).float().mul_(scale)  # (B, H, 1, D)
    scores = torch.matmul(q_last.view(B, Hkv, G, D), key.float().transpose(-1, -2)).view(B, Hkv, G, 1, K)
    scores = scores.masked_fill(hidden, MASK_MIN) if hidden.dtype == torch.bool else scores + hidden
    ours = scores.logsumexp(-1).view(B, H)  # (B, H)
    theirs = lse.gather(2, last[:, None, :].expand(B, H, 1)).squeeze(-1)  # (B, H)
    close = (ours - theirs).abs() <= 1e-3 + 1e-4 * ours.abs()  # fp32 sums in another order: ~1e-6 apart
    return bool((close | ~row_valid.any(1)[:, None]).all())  # rollouts without a response row: not checked


def read_columns(query, key, scale, lse, rows, row_valid, columns, budget, patterns, sink):
    """patterns (B, T, V) += p at the V image keys, sink (B, T) += p at the sink key, for rows (B, T) of one layer.

    lse (B, H, S) the kernel's row log-sum-exp (fp32); columns (B, V + 1) the image keys, then each rollout's sink
    key; rows without a query (row_valid False) read row 0 and must be zeroed by the caller."""
    B, H, S, D = query.shape
    Hkv, G = key.shape[1], H // key.shape[1]
    T, V = rows.shape[1], columns.shape[1] - 1
    # the log-sum-exp rides in the matmul: [q, -lse] . [k * scale, 1] = q . k * scale - lse, one pass fewer
    batch = torch.arange(B, device=query.device)[:, None]  # (B, 1); advanced indexing beats gather on CPU
    keys = key.transpose(1, 2)[batch, columns].float().mul_(scale)  # (B, V + 1, Hkv, D)
    keys = torch.cat([keys, keys.new_ones(B, V + 1, Hkv, 1)], dim=-1).permute(0, 2, 3, 1)  # (B, Hkv, D + 1, V + 1)
    lse_rows = lse.transpose(1, 2)[batch, rows]  # (B, T, H)
    # rows without a query read row 0, which left padding can leave fully masked (lse -inf): make them finite
    lse_rows = lse_rows.masked_fill(~row_valid[:, :, None], 0.0)  # (B, T, H)
    chunk = max(1, budget // max(1, B * H * (V + 1)))  # rows per chunk: bounds the (.., c, V + 1) scores
    chunk = -(-T // -(-T // chunk)) if T else 1  # the same number of chunks, evened out (256 = 128 + 128)
    for t0 in range(0, T, chunk):
        r = rows[:, t0:t0 + chunk]  # (B, c)
        c = r.shape[1]
        q = query.transpose(1, 2)[batch, r].float()  # (B, c, H, D)
        q = torch.cat([q, -lse_rows[:, t0:t0 + c, :, None]], dim=-1).transpose(1, 2)  # (B, H, c, D + 1)
        scores = torch.matmul(q.reshape(B, Hkv, G * c, D + 1), keys).view(B, H, c, V + 1)  # (B, H, c, V + 1)
        probs = scores.exp_().sum(dim=1)  # (B, c, V + 1) softmax probabilities at the V + 1 keys, head sum
        patterns[:, t0:t0 + c] += probs[..., :V]  # NOTE: sums over heads; the caller divides by H
        sink[:, t0:t0 + c] += probs[..., V]


def row_chunks(rows, image_index, H, K, budget):
    """[(first row, rows, keys this chunk sees)] for read_rows: chunks of rows whose (B, H, c, K) scores stay
    within budget elements. Causal attention: a chunk's rows see no key after its last row, so its keys end there
    (the image, in the prompt, comes before): ~1/4 fewer scores when the response is half the sequence.
    NOTE: relies on causality, which connectivity.probe checks (module.is_causal); one host sync."""
    B, T = rows.shape
    chunk = max(1, budget // max(1, B * H * K))
    starts = list(range(0, T, chunk))
    ends = [rows[:, t0:t0 + chunk].max() for t0 in starts]
    image_end = image_index.max() if image_index.shape[1] > 0 else rows.new_zeros(())
    ends = (torch.stack(ends).clamp(min=image_end) + 1).tolist() if starts else []
    return [(t0, min(chunk, T - t0), end) for t0, end in zip(starts, ends)]


def read_rows(query, key, scale, rows, image_index, chunks, masks, patterns, sink):
    """As read_columns, through whole rows: chunks from row_chunks, masks[t0] = row_mask(...) of each chunk."""
    B, H, S, D = query.shape
    Hkv, G = key.shape[1], H // key.shape[1]
    V = image_index.shape[1]
    keys_t = key.float().transpose(-1, -2)  # (B, Hkv, D, K) one fp32 copy of the keys per layer
    for t0, c, K in chunks:  # K: keys this chunk can see
        r = rows[:, t0:t0 + c]  # (B, c)
        hidden, first = masks[t0]  # (B, 1|Hkv, 1|G, c, K), (B, c)
        q = query.gather(2, r[:, None, :, None].expand(B, H, c, D)).float()  # (B, H, c, D)
        q = q.mul_(scale).view(B, Hkv, G * c, D)  # (B, Hkv, G*c, D), scaled here: c*D < c*K numbers
        scores = torch.matmul(q, keys_t[..., :K]).view(B, Hkv, G, c, K)  # (B, Hkv, G, c, K)
        if hidden.dtype == torch.bool:
            scores.masked_fill_(hidden, MASK_MIN)
        else:
            scores.add_(hidden)
        # NOTE: softmax, not exp(s - logsumexp): one fused pass (logsumexp is ~7x slower on CPU). Head sum first
        # (one reduction), then pick V + 1 columns of (B, c, K): half the time of picking them from every head.
        probs = scores.softmax(dim=-1).view(B, H, c, K).sum(dim=1)  # (B, c, K) head sum, as read_columns
        patterns[:, t0:t0 + c] += probs.gather(-1, image_index[:, None, :].expand(B, c, V))
        sink[:, t0:t0 + c] += probs.gather(-1, first[:, :, None]).squeeze(-1)  # (B, c)


# torch's fused attention kernels that return each query row's log-sum-exp as their second output, and the
# argument that asks for it (None: always returned). sdpa picks one of them by device, dtype and mask; the CPU
# one and the CUDA flash one always compute it, the CUDA efficient and cuDNN ones only when asked (they are
# asked in training anyway: the backward needs it); the overrideable one (XPU, HPU, out-of-tree backends) has no
# flag and fills it as its backend decides. Each returns its own layout (canonical_lse), and whatever comes
# back is checked once per kernel (lse_agrees) before it is used. math (and eager) compute none: whole rows.
LSE_KERNELS = {"_scaled_dot_product_flash_attention_for_cpu": None, "_scaled_dot_product_flash_attention": None,
               "_scaled_dot_product_efficient_attention": "compute_log_sumexp",
               "_scaled_dot_product_cudnn_attention": "compute_log_sumexp",
               "_scaled_dot_product_fused_attention_overrideable": None}


class KernelLogSumExp(TorchDispatchMode):
    """Keeps the row log-sum-exp of the fused attention kernel that runs inside this block, and the kernel's name.

    A dispatch mode sees the aten ops a call runs, below autograd and autocast: sdpa's own choice of kernel runs
    with its own arguments and its result is passed back untouched, so the layer's output does not change
    (tests/test_connectivity.py checks the logits bit for bit); only a kernel that computes the log-sum-exp on
    request is asked for it. Any other kernel (math, eager, flash-attn's package, one torch adds later) leaves
    `lse` None, and the probe then reads whole rows. `lse` is the kernel's own layout (see canonical_lse).
    NOTE cuDNN: the request is part of its graph's cache key (MHA.cpp, return_softmaxstats), so a probed no-grad
    forward runs the graph a forward with grad runs (which asks for the lse to keep for the backward), not the one
    an unprobed no-grad forward runs; the two may differ in the last bits (unmeasured: no GPU here). Under the
    efficient kernel the request only adds the lse's write."""

    def __init__(self):
        super().__init__()
        self.lse = self.kernel = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = func.overloadpacket.__name__
        if name in LSE_KERNELS:
            flag = LSE_KERNELS[name]
            if flag is not None:  # ask for the log-sum-exp, wherever the argument sits
                index = [a.name for a in func._schema.arguments].index(flag)
                if index < len(args):
                    args = args[:index] + (True,) + args[index + 1:]
                else:
                    kwargs[flag] = True
            out = func(*args, **kwargs)
            self.lse, self.kernel = out[1], name
            return out
        return func(*args, **kwargs)
