"""AT-RL credit assignment: scale each response token's advantage by a weight W of its attention cluster.

GRPO gives every token of rollout i the same advantage A[i]. AT-RL (arXiv 2602.11455) observes that only a
small set of "anchor" tokens attends strongly to the image, and moves credit towards them and towards the
tokens that look at the image the same way:

    A[i]       = (R[i] - mean_G R) / (std_G R + eps)                 group-normalised reward (GRPO)
    anchors    = top anchor_frac of the response's tokens by rho     rho[t] = attention mass on image keys
    C_1..C_K   = Louvain clusters of the token graph                 edge(t, u) = cos(x_t, x_u), kNN, >= 0
    s_k        = |anchors in C_k| / |C_k|                            anchor share of cluster k
    W_k        = c * (1 + (gain - 1) * s_k),  c such that mean_t W(C(t)) = 1 over the response's tokens
    A_AT[i, t] = W(C(t)) * A[i]                                      (the paper's A_AT = W(C_k) * A)

where x_t is token t's attention row over the image keys minus the response's mean row, L2-normalised.

Worked example (one response, 6 tokens, 4 image patches, anchor_frac = 1/3 so 2 anchors). Tokens 1, 3, 4
look at patches 0-1, tokens 0, 2, 5 spread thinly over everything:

    token    rows over 4 patches      rho    anchor?  cluster   s_k   1+(gain-1)s_k   W (gain=2)
    0 "The"  [.05 .05 .05 .05]        .20      -        B       0       1             0.75
    1 "bar"  [.50 .10 .00 .00]        .60      yes      A      2/3     5/3            1.25
    2 "is"   [.02 .02 .03 .03]        .10      -        B       0       1             0.75
    3 "7"    [.40 .30 .00 .00]        .70      yes      A      2/3     5/3            1.25
    4 "tall" [.30 .10 .00 .00]        .40      -        A      2/3     5/3            1.25
    5 "."    [.04 .04 .06 .06]        .20      -        B       0       1             0.75

The mean of 1+(gain-1)s over the 6 tokens is (3*5/3 + 3*1)/6 = 4/3, so W_A = (5/3)/(4/3) = 1.25 and
W_B = 1/(4/3) = 0.75. Token 4 is no anchor but shares the anchors' view of the image, so it is up-weighted
too: that is what the clustering adds over plain anchor masks (mode "tokens": anchors 1.5, others 0.75).

>>> rows = torch.tensor([[[.05, .05, .05, .05], [.50, .10, 0, 0], [.02, .02, .03, .03],
...                       [.40, .30, 0, 0], [.30, .10, 0, 0], [.04, .04, .06, .06]]])   # (B=1, T=6, V=4)
>>> rho, mask = rows.sum(-1), torch.ones(1, 6, dtype=torch.bool)
>>> token_weights(rows, rho, mask, mode="atrl", anchor_frac=1/3)
tensor([[0.7500, 1.2500, 0.7500, 1.2500, 1.2500, 0.7500]])
>>> token_weights(rows, rho, mask, mode="tokens", anchor_frac=1/3)
tensor([[0.7500, 1.5000, 0.7500, 1.5000, 0.7500, 0.7500]])
>>> token_weights(rows, rho, mask, mode="low_only", anchor_frac=1/3)
tensor([[2., 0., 2., 0., 0., 2.]])

Where we guess, because the paper is silent (the defaults are ours; most are arguments here):
  1. Anchor count: round(anchor_frac * n) of the n valid tokens, at least 1; ties in rho go to the earlier
     token (stable sort), so a constant-rho response takes its first tokens.
  2. Token features: attention rows centred by the response's mean row, then L2-normalised. Without the
     centring the diffuse share common to all rows glues every token together (the planted-anchor test in
     tests/test_atrl.py fails without it). A row equal to the mean (zero after centring) gets no edges.
  3. Graph: cosine similarity, k nearest neighbours (k = round(sqrt(n)) within [2, 10] for an n-token response,
     or a fixed k; capped at n-1) made symmetric by UNION (edge if
     either token lists the other; the weight is the same cosine both ways), negative weights clipped to 0,
     no self loops. Union keeps small clusters reachable; a mutual-kNN graph would fragment more.
  4. Clustering: Louvain (modularity, resolution 1.0, seeded) instead of the paper's METIS, so there is no
     cluster count to choose. A graph without edges gives one cluster per token.
  5. W: the linear form 1 + (gain-1)*s_k with gain=2.0 (a cluster made only of anchors gets twice the
     weight of one without), normalised per response to token-mean 1 so A keeps its sign and the update
     size stays comparable to GRPO.
  6. Ablation arms: anchor_only = W on clusters holding at least one anchor (s_k > 0), low_only = the rest
     (s_k = 0); both are 0/1 masks rescaled to token-mean 1 like atrl (a response with no low-connectivity
     cluster gets W = 0 under low_only). random = the atrl weights shuffled over the response's tokens.
  7. Group size 1 is refused (its advantage is always 0); an all-equal group gets exactly 0.
  8. Seeds: graph b is clustered with seed + b, and `random` shuffles with `seed`; or, given one seed per
     response, each response uses its own (train.py passes each rollout's sampling key, so W does not depend
     on the micro-batch size or the number of ranks).
  9. Two peer selectors as arms, each as its own paper's code shapes it (not rescaled to mean 1): `vppo`
     keeps the top 40% of tokens by visual dependency, the k3 KL between the policy on the image and on the
     image with half its patches blackened, and scales each response's advantage by its mean dependency
     (min-max normalised over the batch, mean factor 1); `entropy` keeps the top 20% by the policy's entropy.
     Both count ceil(frac * n) tokens, as their code does.
 10. Oracle arms (ours, for VisualMath v3 where every token's class is known, tasks/chains.py): `oracle_mask` zeroes
     the tokens known not to change the answer (`noise`: filler, useless descriptions), `oracle_up` lifts the
     perception tokens by gain (`tokens` with perfect anchors), `oracle` does both; `random_mask` zeroes as many
     tokens as oracle_mask at random places (the `noise` mask shuffled). All rescaled to mean 1 like atrl, so
     they bound what a selector of perception tokens can gain at the same update size.
     >>> mask, perception = torch.ones(1, 4, dtype=torch.bool), torch.tensor([[True, False, False, False]])
     >>> noise = torch.tensor([[False, True, True, False]])
     >>> for mode in ("oracle_mask", "oracle_up", "oracle"):
     ...     print(mode, token_weights(None, None, mask, mode, perception=perception, noise=noise))
     oracle_mask tensor([[2., 0., 0., 2.]])
     oracle_up tensor([[1.6000, 0.8000, 0.8000, 0.8000]])
     oracle tensor([[2.6667, 0.0000, 0.0000, 1.3333]])

References: AT-RL, arXiv 2602.11455 (A_AT = W(C_k) A); GRPO, Shao et al. 2024 (DeepSeekMath, outcome supervision);
VPPO, Huang et al. 2025, arXiv 2510.09285 (github.com/huaixuheqing/VPPO-RL, verl/workers/actor/dp_actor.py);
high-entropy minority, Wang et al. 2025, arXiv 2506.01939 (TRL GRPOConfig.top_entropy_quantile);
Dr.GRPO, Liu et al. 2025 (scale="none"); Louvain, Blondel et al. 2008 (clustering.py).
Dimension letters: B rollouts, G group size, T response tokens, V image tokens.
Run: `python -m pytest -q tests/test_atrl.py` (includes these examples); timing: `python bench/weights.py`.
"""

import torch

import clustering

MODES = ("uniform", "atrl", "tokens", "anchor_only", "low_only", "random", "vppo", "entropy",
         "oracle", "oracle_mask", "oracle_up", "random_mask")
PROBE_MODES = ("atrl", "tokens", "anchor_only", "low_only", "random")  # the arms whose W needs the attention probe
CLASS_MODES = ("oracle", "oracle_mask", "oracle_up", "random_mask")    # the arms whose W needs known token classes


# --------------------------------------------------------------------------------------------------
# Group advantages
# --------------------------------------------------------------------------------------------------

def group_advantages(rewards, group_size, scale="group", eps=1e-6, std="sample"):
    """Advantage of each rollout against the other rollouts of its prompt. rewards (B,) -> (B,).

    The G rollouts of one prompt must be adjacent: rewards[g*G:(g+1)*G] is group g.
    scale: "group" divides by the group's std (GRPO), "batch" by the std of the whole batch
    (TRL's scale_rewards="batch"), "none" keeps R - mean_G R (Dr.GRPO).
    std: "sample" divides the squared deviations by n - 1 (torch.std's default, as verl, EasyR1, VPPO and TRL
    compute it), "population" by n. With binary rewards the two differ by sqrt(G / (G - 1)): the sample std is
    larger, so its advantages are sqrt((G - 1) / G) times the population ones (G = 4: 0.866; G = 8: 0.935).

    >>> group_advantages(torch.tensor([1., 0., 0., 1.]), group_size=4, std="population").round(decimals=4)
    tensor([ 1., -1., -1.,  1.])
    >>> group_advantages(torch.tensor([1., 0., 0., 1.]), group_size=4).round(decimals=4)   # sqrt(3/4) = 0.8660
    tensor([ 0.8660, -0.8660, -0.8660,  0.8660])
    >>> group_advantages(torch.tensor([1., 0., 0., 1., .5, .5]), group_size=2, scale="none")
    tensor([ 0.5000, -0.5000, -0.5000,  0.5000,  0.0000,  0.0000])
    """
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        # NOTE: with G=1 the baseline is the reward itself, so every advantage is 0 and nothing is learnt.
        raise ValueError(f"group_size={group_size}: need at least 2 rollouts per prompt (G=1 gives A=0 always)")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of group_size={group_size}; "
                         f"B must be a multiple of G (G rollouts per prompt, kept adjacent)")
    r = rewards.view(-1, group_size)                                 # (B/G, G)
    centred = r - r.mean(dim=1, keepdim=True)                        # (B/G, G)
    # An all-equal group carries no signal; force exact zeros (the float mean may be off by one ulp).
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)             # (B/G, 1)
    centred = centred.masked_fill(all_equal, 0.0)
    if std not in ("sample", "population"):
        raise ValueError(f"std={std!r}: use 'sample' (n - 1, as verl/TRL) or 'population' (n)")
    correction = 1 if std == "sample" else 0      # Bessel's correction: sample std divides by n - 1
    if scale == "group":
        # GRPO: the group's std; eps keeps tiny-variance groups finite (verl core_algos.py: (r - mean) / (std + eps)).
        adv = centred / (r.std(dim=1, correction=correction, keepdim=True) + eps)
    elif scale == "batch":
        # Group baseline, batch-wide std (more robust when most groups are nearly constant).
        adv = centred / (rewards.std(correction=correction) + eps)
    elif scale == "none":
        # Dr.GRPO: no std division, so easy/hard prompts are not re-weighted.
        adv = centred
    else:
        raise ValueError(f"scale={scale!r}: use 'group', 'batch' or 'none'")
    return adv.reshape(-1)                                           # (B,)


# --------------------------------------------------------------------------------------------------
# Anchors
# --------------------------------------------------------------------------------------------------

def select_anchors(rho, mask, frac=0.15):
    """Top `frac` of each response's valid tokens by image-attention density rho. (B, T) -> bool (B, T).

    Count per response: round(frac * n), at least 1 (0 only for an empty response); ties go to the
    earlier token; padding (mask False) is never chosen.

    >>> select_anchors(torch.tensor([[.1, .9, .3, .9, 0.]]), torch.tensor([[1, 1, 1, 1, 0]]).bool(), frac=0.5)
    tensor([[False,  True, False,  True, False]])
    """
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"anchor frac={frac}: must be a fraction in [0, 1] (default 0.15)")
    mask = mask.bool()
    B, T = rho.shape
    n = mask.sum(dim=1)                                              # (B,)
    # round half up, then at least one anchor and never more than the valid tokens
    count = torch.floor(frac * n.double() + 0.5).long().clamp_min(1).minimum(n)  # (B,)
    score = rho.float().masked_fill(~mask, float("-inf"))            # (B, T) padding sorts last
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # (B, T)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(T, device=rho.device).expand(B, T))
    return (rank < count[:, None]) & mask                            # (B, T)


# --------------------------------------------------------------------------------------------------
# Token graph
# --------------------------------------------------------------------------------------------------

def neighbours(n, k=0):
    """k of each response's kNN graph: `k` itself if > 0, else round(sqrt(n)) within [2, 10] (our rule of
    thumb: a fixed k = 10 makes the graph of a 20-token answer nearly complete and Louvain then finds ~2
    clusters); never more than the n - 1 other tokens. n (B,) valid tokens per response -> (B,) long.

    >>> neighbours(torch.tensor([1, 5, 27, 100, 1000])), neighbours(torch.tensor([5, 27]), k=10)
    (tensor([ 0,  2,  5, 10, 10]), tensor([ 4, 10]))
    """
    n = torch.as_tensor(n)
    k_n = torch.full_like(n, k) if k > 0 else n.double().sqrt().round().long().clamp(2, 10)
    return torch.minimum(k_n, (n - 1).clamp_min(0))


@torch.no_grad()
def token_graph(patterns, mask, k=0, chunk_entries=1 << 24):
    """Symmetric cosine kNN graph of each response's tokens, as CSR triples for clustering.louvain_batch.

    patterns (B, T, V) attention rows over image keys, mask (B, T); k as in neighbours() (0 = from each
    response's length). Returns a list of B triples
    (indptr (n+1,) int64, indices (nnz,) int64, weights (nnz,) float64) as numpy arrays, where the n nodes
    of response b are its valid tokens in order. Work runs on patterns.device in chunks of responses
    holding about `chunk_entries` (T, T) similarities (2^24 floats = 64 MiB), so 512 x 1024 tokens fit.

    Two triangles of look-alike rows: tokens {0, 2, 4} look at patch 0, tokens {1, 3, 5} at patch 1.
    >>> rows = torch.tensor([[[1., 0.], [0., 1.], [.9, .1], [.1, .9], [.8, 0.], [0., .8]]])
    >>> indptr, indices, weights = token_graph(rows, torch.ones(1, 6, dtype=torch.bool), k=2)[0]
    >>> indptr.tolist(), indices.tolist()
    ([0, 2, 4, 6, 8, 10, 12], [2, 4, 3, 5, 0, 4, 1, 5, 0, 2, 1, 3])
    """
    mask = mask.bool()
    B, T, V = patterns.shape
    node = mask.long().cumsum(dim=1) - 1                             # (B, T) position -> node id in its response
    per_chunk = max(1, chunk_entries // max(1, T * T))
    k_all = neighbours(mask.sum(dim=1).cpu(), k).to(mask.device)     # (B,) this response's k
    k_eff = int(k_all.max()) if B else 0                             # the top-k width; cut per response below
    buffer = patterns.new_empty(min(per_chunk, B), T, T, dtype=torch.float32)  # reused: no page faults per chunk
    graphs = []
    for b0 in range(0, B, per_chunk):
        m = mask[b0:b0 + per_chunk]                                  # (c, T)
        c = m.shape[0]
        x = patterns[b0:b0 + per_chunk].float() * m[..., None]       # (c, T, V) padding rows zeroed
        n = m.sum(dim=1).clamp_min(1)                                # (c,)
        mean_row = x.sum(dim=1, keepdim=True) / n[:, None, None]     # (c, 1, V) the response's mean row
        raw_norm = x.norm(dim=-1, keepdim=True)                      # (c, T, 1)
        x = (x - mean_row) * m[..., None]                            # (c, T, V) centred
        norm = x.norm(dim=-1, keepdim=True)                          # (c, T, 1)
        # NOTE: a row (almost) equal to the mean is rounding noise after centring; normalising it would turn
        # noise into confident edges, so it becomes the zero vector (cosine 0 with everyone -> no edges).
        x = torch.where(norm > 1e-4 * raw_norm, x / norm.clamp_min(1e-30), 0.0)
        if k_eff > 0:
            sim = torch.bmm(x, x.transpose(1, 2), out=buffer[:c])    # (c, T, T) cosine similarity
            sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))        # no self loops
            sim.masked_fill_(~m[:, None, :], float("-inf"))          # padding is nobody's neighbour
            val, idx = sim.topk(k_eff, dim=-1)                       # (c, T, k) each token's k nearest
        else:
            val = torch.zeros(c, T, 0, device=x.device)              # T = 1: no other token, no edge
            idx = torch.zeros(c, T, 0, dtype=torch.long, device=x.device)
        # Keep positive similarities of valid rows among each response's own k nearest: clipping to 0 removes
        # the edge (-inf padding goes too).
        within_k = torch.arange(val.shape[-1], device=val.device) < k_all[b0:b0 + c, None, None]  # (c, 1, k)
        bi, i, slot = ((val > 0) & m[..., None] & within_k).nonzero(as_tuple=True)  # (e,) directed kNN edges
        j, w = idx[bi, i, slot], val[bi, i, slot]                    # (e,)
        # Union symmetrisation without a dense (T, T) matrix: one key per unordered pair {i, j}; a pair listed
        # from both sides keeps the larger of its two values (equal up to rounding), so A[i,j] == A[j,i] exactly.
        pair = (bi * T + torch.minimum(i, j)) * T + torch.maximum(i, j)  # (e,)
        pair, where = torch.unique(pair, return_inverse=True)        # (u,) sorted undirected pairs
        w = torch.zeros(len(pair), device=w.device).scatter_reduce_(0, where, w, "amax", include_self=False)
        lo, hi, bi = (pair // T) % T, pair % T, pair // (T * T)      # (u,) each
        # Both directions, sorted by (response, row, column) = CSR order.
        bi, i, j, w = torch.cat([bi, bi]), torch.cat([lo, hi]), torch.cat([hi, lo]), torch.cat([w, w])
        order = torch.argsort((bi * T + i) * T + j)
        bi, i, j = bi[order], i[order], j[order]
        w = w[order].double().cpu().numpy()
        cols = node[b0:b0 + per_chunk][bi, j].cpu().numpy()
        row_counts = torch.bincount(bi * T + i, minlength=c * T).view(c, T)  # (c, T) edges per token
        ends = torch.cumsum(torch.bincount(bi, minlength=c), 0).cpu().tolist()
        for r in range(c):
            counts = row_counts[r][m[r]]                             # (n_r,) valid rows only
            indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).cpu().numpy()
            start = ends[r - 1] if r > 0 else 0
            graphs.append((indptr, cols[start:ends[r]], w[start:ends[r]]))
    return graphs


def cluster_tokens(patterns, mask, k=0, resolution=1.0, seed=0):
    """Louvain cluster of every valid token, -1 on padding. (B, T, V), (B, T) -> long (B, T).

    Graph b is clustered with seed `seed + b` by clustering.louvain_batch (all graphs in one call, in
    parallel over cores), or with seed[b] when `seed` is a (B,) sequence: per-rollout seeds make a response's
    clusters independent of its slot in the batch (train.py passes one per rollout, so micro-batching and
    the number of ranks do not change W). A graph without edges (n <= 2, or rows equal to the mean) leaves
    every token alone.
    """
    mask = mask.bool()
    graphs = token_graph(patterns, mask, k=k)
    labels = clustering.louvain_batch(graphs, resolution=resolution, seed=seed)  # list of (n_b,)
    cluster = torch.full(mask.shape, -1, dtype=torch.long)           # (B, T)
    cluster[mask.cpu()] = torch.cat([torch.as_tensor(l, dtype=torch.long) for l in labels]) if labels else 0
    return cluster.to(mask.device)


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------

def _mean_one(w, mask):
    """Rescale each response's weights so their mean over its valid tokens is 1; all-zero rows stay 0."""
    w = w * mask                                                     # (B, T)
    total = w.sum(dim=1, keepdim=True)                               # (B, 1)
    n = mask.sum(dim=1, keepdim=True)                                # (B, 1)
    return torch.where(total > 0, w * n / total.clamp_min(1e-30), 0.0)


def _cluster_share(cluster, anchors, mask):
    """s_k of each token's cluster: the anchor fraction of the cluster holding it. -> (B, T), 0 on padding."""
    B, T = cluster.shape
    gid = (torch.arange(B, device=cluster.device)[:, None] * T + cluster.clamp_min(0))[mask]  # (N,) global id
    size = torch.bincount(gid, minlength=B * T).double()             # (B*T,) tokens per cluster
    hits = torch.bincount(gid, weights=anchors[mask].double(), minlength=B * T)  # anchors per cluster
    share = torch.zeros(B, T, device=cluster.device)                 # (B, T)
    share[mask] = (hits[gid] / size[gid]).float()
    return share


def _shuffle_within(W, mask, seed):
    """Permute each row's values over its valid positions (seeded, CPU generator); padding stays 0."""
    B, T = W.shape
    if isinstance(seed, int):
        keys = torch.rand(B, T, generator=torch.Generator().manual_seed(seed))            # (B, T)
    else:  # one seed per row: the permutation of a response does not depend on its batch slot
        keys = torch.stack([torch.rand(T, generator=torch.Generator().manual_seed(int(s))) for s in seed])
    keys = keys.to(W.device)
    # Valid positions first, in order (targets) / in random order (sources); padding last in both.
    targets = torch.sort((~mask).float(), dim=1, stable=True).indices  # (B, T)
    sources = torch.sort(torch.where(mask, keys, 2.0), dim=1).indices  # (B, T)
    return torch.zeros_like(W).scatter_(1, targets, W.gather(1, sources))


# --------------------------------------------------------------------------------------------------
# Peer token selectors: VPPO's visual dependency and the high-entropy minority
# --------------------------------------------------------------------------------------------------

def top_fraction(score, mask, frac):
    """bool (B, T): the ceil(frac * n) highest-scoring of each response's n valid tokens (ties: earlier first).

    The rule of both peer papers' code (VPPO's top-p perception tokens, the high-entropy minority's top 20%).
    >>> top_fraction(torch.tensor([[.1, .9, .3, .8, 5.]]), torch.tensor([[1, 1, 1, 1, 0]]).bool(), 0.4)
    tensor([[False,  True, False,  True, False]])
    """
    mask = mask.bool()
    count = torch.ceil(frac * mask.sum(dim=1).double()).long()      # (B,)
    order = torch.sort(score.float().masked_fill(~mask, float("-inf")), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return (rank < count[:, None]) & mask                            # (B, T)


def visual_dependency(logp, logp_perturbed):
    """VPPO's per-token visual dependency (arXiv 2510.09285, Sec. 3; their code's "low_var_kl"): with
    d = log pi(y_t | perturbed image) - log pi(y_t | image), the k3 estimate exp(d) - d - 1 >= 0 of the KL
    between the two next-token distributions, d clamped to [-20, 20] and the result to [0, 10]. (B, T) -> (B, T).

    >>> visual_dependency(torch.tensor([[-0.1, -0.1]]), torch.tensor([[-0.1, -2.4]])).round(decimals=3)
    tensor([[0.0000, 1.4000]])
    """
    d = (logp_perturbed - logp).clamp(-20.0, 20.0)
    return (d.exp() - d - 1.0).clamp(0.0, 10.0)


def vppo_shaping(dependency, mask, beta_min=0.9):
    """VPPO's trajectory-level advantage shaping: one factor per response, from its mean dependency S_i.

    S_i is min-max normalised over the batch to s_i in [0, 1] and mapped to beta_min + s_i (1 - beta_min) /
    mean(s), so the factors average exactly 1 and the response that leans least on the image keeps beta_min.
    beta_min = 0.9 is what VPPO's released training scripts pass (examples/configs/train_vppo_7b.sh and _8b.sh:
    advantage_scaling_min=0.9); 0.8 is only their config dataclass default (dp_actor.py). Equal S everywhere gives 1.
    (B, T) -> (B,).
    >>> vppo_shaping(torch.tensor([[1., 1.], [3., 3.], [2., 2.]]), torch.ones(3, 2, dtype=torch.bool))
    tensor([0.9000, 1.1000, 1.0000])
    """
    mask = mask.bool()
    n = mask.sum(dim=1)                                              # (B,)
    S = (dependency * mask).sum(dim=1) / n.clamp_min(1)              # (B,) mean dependency per response
    factor = torch.ones_like(S)
    valid = n > 0
    lo, hi = (S[valid].min(), S[valid].max()) if valid.any() else (0.0, 0.0)
    if valid.sum() > 1 and hi - lo > 1e-6:
        s = ((S[valid] - lo) / (hi - lo)).clamp(0.0, 1.0)
        factor[valid] = beta_min + s * (1.0 - beta_min) / (s.mean() + 1e-8)
    return factor


# --------------------------------------------------------------------------------------------------
# Weights of every arm
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def token_weights_with_stats(patterns, rho, mask, mode="atrl", anchor_frac=0.15, gain=2.0, k=0,
                             resolution=1.0, seed=0, entropy=None, dependency=None, select_frac=None,
                             beta_min=0.9, perception=None, noise=None):
    """token_weights plus a dict of floats for logging (anchor_frac, clusters, W_mean, W_max, W_anchor_mean).

    The peer arms take their own signal instead of the probe's (patterns and rho may be None): `entropy`
    (B, T) the policy's per-token entropy (mode "entropy"), `dependency` (B, T) visual_dependency (mode
    "vppo"); select_frac = the share of tokens they keep (None: their papers' 0.2 and 0.4). The oracle arms
    (CLASS_MODES) take the known classes: `perception` and `noise` bool (B, T) (guess 10 above).
    clusters = mean number of clusters per non-empty response (0 for modes that do not cluster);
    anchor_frac = the share of tokens selected (anchors, or the peer arms' kept tokens);
    W_anchor_mean = mean W over those tokens (how much they are lifted).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {', '.join(MODES)}")
    if gain <= 0:
        raise ValueError(f"gain={gain}: must be > 0 so weights stay positive (1 = no reweighting, default 2)")
    mask = mask.bool()
    maskf = mask.float()                                             # (B, T)
    if mode == "entropy":
        anchors = top_fraction(entropy, mask, 0.2 if select_frac is None else select_frac)  # (B, T)
    elif mode == "vppo":
        anchors = top_fraction(dependency, mask, 0.4 if select_frac is None else select_frac)  # (B, T)
    elif mode in CLASS_MODES:
        if perception is None or noise is None:
            raise ValueError(f"mode={mode!r} needs the token classes: perception and noise (B, T) bool masks")
        anchors, noise = perception.bool() & mask, noise.bool() & mask  # the tokens the oracle knows matter
    elif mode == "uniform" and rho is None:
        anchors = torch.zeros_like(mask)                             # plain GRPO needs no probe at all
    else:
        anchors = select_anchors(rho, mask, anchor_frac)             # (B, T)
    share, n_clusters = None, 0.0
    if mode in ("atrl", "anchor_only", "low_only", "random"):
        cluster = cluster_tokens(patterns, mask, k=k, resolution=resolution, seed=seed)  # (B, T)
        share = _cluster_share(cluster, anchors, mask)               # (B, T) s_k per token
        nonempty = mask.any(dim=1)
        n_clusters = float((cluster.max(dim=1).values + 1)[nonempty].float().mean()) if nonempty.any() else 0.0
    if mode == "uniform":
        # GRPO / DAPO: every token carries the rollout's advantage.
        W = maskf
    elif mode == "atrl":
        # AT-RL (arXiv 2602.11455): W(C_k) grows with the anchor share of the cluster; guesses 5 in the docstring.
        W = _mean_one(1.0 + (gain - 1.0) * share, maskf)
    elif mode == "tokens":
        # Ablation (ours): the same formula on the anchor mask itself -- does the clustering matter?
        W = _mean_one(1.0 + (gain - 1.0) * anchors.float(), maskf)
    elif mode == "anchor_only":
        # Ablation: train only on clusters that hold an anchor (s_k > 0).
        W = _mean_one((share > 0).float(), maskf)
    elif mode == "low_only":
        # The paper's degradation arm: train only on clusters without anchors (s_k = 0).
        W = _mean_one((share == 0).float(), maskf)
    elif mode == "random":
        # Ablation (ours): the atrl weights shuffled over each response's valid tokens -- does *where* matter?
        W = _shuffle_within(_mean_one(1.0 + (gain - 1.0) * share, maskf), mask, seed)
    elif mode == "vppo":
        # VPPO (arXiv 2510.09285): only the top 40% of each response's tokens by visual dependency carry the
        # gradient (token-level gradient filtering, no rescaling), and the response's advantage is scaled by
        # its mean dependency (trajectory-level advantage shaping, mean factor 1 over the batch).
        W = anchors.float() * vppo_shaping(dependency, mask, beta_min)[:, None]
    elif mode == "entropy":
        # High-entropy minority (arXiv 2506.01939; TRL's top_entropy_quantile): only the top 20% of each
        # response's tokens by the policy's entropy carry the gradient, unrescaled.
        W = anchors.float()
    elif mode == "oracle_mask":
        # Oracle control (ours): no gradient through the tokens known not to change the answer.
        W = _mean_one((~noise).float(), maskf)
    elif mode == "oracle_up":
        # Oracle control (ours): `tokens` with perfect anchors -- the perception tokens lifted by gain.
        W = _mean_one(1.0 + (gain - 1.0) * anchors.float(), maskf)
    elif mode == "oracle":
        # Oracle control (ours): both -- what a perfect selector of the perception tokens could do.
        W = _mean_one((1.0 + (gain - 1.0) * anchors.float()) * (~noise).float(), maskf)
    elif mode == "random_mask":
        # Control for oracle_mask (ours): as many tokens masked, at random places -- which tokens, or how many?
        W = _mean_one(1.0 - _shuffle_within(noise.float(), mask, seed), maskf)
    valid = W[mask]
    on_anchors = W[anchors]
    stats = dict(anchor_frac=float(anchors.sum() / mask.sum().clamp_min(1)), clusters=n_clusters,
                 W_mean=float(valid.mean()) if valid.numel() else 0.0,
                 W_max=float(valid.max()) if valid.numel() else 0.0,
                 W_anchor_mean=float(on_anchors.mean()) if on_anchors.numel() else 0.0)
    return W, stats


def token_weights(patterns, rho, mask, mode="atrl", anchor_frac=0.15, gain=2.0, k=0, resolution=1.0, seed=0,
                  perception=None, noise=None):
    """Per-token weight W (B, T) for each mode in MODES but vppo / entropy; padding gets 0. See the module docstring.

    patterns (B, T, V) attention rows over image keys, rho (B, T) density, mask (B, T) valid response
    tokens. Every non-empty response's W has mean 1 over its valid tokens (except low_only when all its
    clusters hold anchors: then 0). Clustering runs on CPU; the result is on patterns.device.
    """
    return token_weights_with_stats(patterns, rho, mask, mode, anchor_frac, gain, k, resolution, seed,
                                    perception=perception, noise=noise)[0]


def token_advantages(adv, W):
    """A_AT[i, t] = W[i, t] * A[i]. adv (B,), W (B, T) -> (B, T); W >= 0 keeps the sign of A.

    >>> token_advantages(torch.tensor([1., -2.]), torch.tensor([[1.25, .75], [2., 0.]]))
    tensor([[ 1.2500,  0.7500],
            [-4.0000, -0.0000]])
    """
    return adv[:, None] * W                                          # (B, T)


# --------------------------------------------------------------------------------------------------
# Policy loss: what the per-token advantages feed (train.py calls these once per micro-batch)


def ppo_clip_loss(logp, old_logp, adv, clip_low=0.2, clip_high=0.28, dual_clip=0.0):
    """Per-token PPO-clip loss and a clipped-token indicator, both (B, T). adv is per token (A_AT).

        r = exp(logp - old_logp);  loss = max(-adv * r, -adv * clip(r, 1 - clip_low, 1 + clip_high))

    clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025, Eq. 10): low-probability tokens with A > 0
    may grow further before the gradient stops. dual_clip = c > 1 caps the loss of A < 0 tokens at -c * A
    (Ye et al. 2020), so a token whose ratio exploded cannot dominate the batch.

    >>> loss, clipped = ppo_clip_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]))
    >>> loss, clipped                                  # r = 1: loss = -A, nothing clipped
    (tensor([[-1.,  1.]]), tensor([[0., 0.]]))
    """
    ratio = torch.exp(logp - old_logp)                                         # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)                                   # the pessimistic bound
    if dual_clip > 1:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss, (clipped > unclipped).float()


def kl_penalty(logp, ref_logp, estimator="k3"):
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating KL"):
    k1 = -log q/p (unbiased, can be < 0), k2 = (log q/p)^2 / 2 (low variance, biased), k3 = q/p - 1 - log q/p
    (unbiased and >= 0; GRPO's choice), with q = pi_ref, p = pi.

    >>> kl_penalty(torch.tensor([0.0]), torch.tensor([0.0]))   # identical policies
    tensor([0.])
    """
    log_ratio = ref_logp - logp                                                # log q/p, (B, T)
    if estimator == "k1":
        return -log_ratio
    elif estimator == "k2":
        return 0.5 * log_ratio ** 2
    elif estimator == "k3":
        return torch.exp(log_ratio) - 1 - log_ratio
    raise ValueError(f"estimator={estimator!r}: use k1, k2 or k3")


def aggregate_loss(loss_tok, mask, mode, n_tokens, n_seqs, max_len):
    """This micro-batch's share of the batch loss; summing the shares of all micro-batches (and ranks) gives
    exactly the loss of the whole batch, because the denominators are GLOBAL counts: n_tokens valid tokens
    and n_seqs non-empty responses over every micro-batch and rank, max_len the generation budget.

      token_mean               sum_{i,t} l / n_tokens                     (DAPO: every token weighs the same)
      seq_mean_token_mean      sum_i (sum_t l_it / n_i) / n_seqs          (GRPO: every response weighs the same)
      seq_mean_token_sum_norm  sum_{i,t} l / (n_seqs * max_len)           (Dr.GRPO: no length normalisation)

    NOTE: a per-micro-batch mean here (the common bug) silently re-weights tokens by micro-batch size.

    >>> l, m = torch.tensor([[1., 3.], [2., 0.]]), torch.tensor([[1., 1.], [1., 0.]])
    >>> aggregate_loss(l, m, "token_mean", 3, 2, 2), aggregate_loss(l, m, "seq_mean_token_mean", 3, 2, 2)
    (tensor(2.), tensor(2.))
    """
    if mode == "token_mean":
        return (loss_tok * mask).sum() / n_tokens
    elif mode == "seq_mean_token_mean":
        return ((loss_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n_seqs
    elif mode == "seq_mean_token_sum_norm":
        return (loss_tok * mask).sum() / (n_seqs * max_len)
    raise ValueError(f"mode={mode!r}: use token_mean, seq_mean_token_mean or seq_mean_token_sum_norm")
