"""Behaviour checks and oracles for atrl.py: advantages, anchors, token graph, weights of every arm.

Run: python -m pytest -q tests/test_atrl.py
"""

import doctest
import math

import pytest
import torch

import atrl
from conftest import dense_from_csr, rounding


def planted(B=3, T=60, V=24, groups=3, per_group=3, seed=0):
    """Responses where `groups` x `per_group` anchor tokens each look sharply at their group's own patches
    (rho ~ 0.6) and every other token spreads a little attention over all patches (rho ~ 0.1).
    Returns patterns (B, T, V), rho (B, T), mask (B, T), planted anchor mask (B, T), group id (B, T) (-1 = none).
    """
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.rand(B, T, V, generator=gen) * 0.1 / V * 2    # (B, T, V) diffuse, mean 0.1 total
    group = torch.full((B, T), -1)
    patch = V // groups
    for b in range(B):
        pos = torch.randperm(T, generator=gen)[:groups * per_group]  # anchors anywhere in the response
        for g in range(groups):
            for t in pos[g * per_group:(g + 1) * per_group]:
                row = torch.zeros(V)
                row[g * patch:(g + 1) * patch] = torch.rand(patch, generator=gen) + 0.5
                patterns[b, t] = 0.6 * row / row.sum()
                group[b, t] = g
    rho = patterns.sum(-1)                                           # (B, T)
    mask = torch.ones(B, T, dtype=torch.bool)
    return patterns, rho, mask, group >= 0, group


# --------------------------------------------------------------------------------------------------
# docstring examples
# --------------------------------------------------------------------------------------------------

def test_docstring_examples():
    result = doctest.testmod(atrl, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0


# --------------------------------------------------------------------------------------------------
# group advantages
# --------------------------------------------------------------------------------------------------

def test_group_advantages_paper_example():
    # population std of (1, 0, 0, 1) is 0.5, so A = +-0.5 / (0.5 + eps 1e-6), nearly +-1 (the paper's and our
    # pre-#30 convention); six roundings (mean, centring, variance, sqrt, + eps, division) of numbers <= 1
    adv = atrl.group_advantages(torch.tensor([1., 0., 0., 1.]), 4, std="population")
    assert torch.allclose(adv, torch.tensor([1., -1., -1., 1.]) * (0.5 / (0.5 + 1e-6)), atol=rounding(6), rtol=0)
    # sample std (verl / TRL, the default): variance 4 * 0.25 / (4 - 1) = 1/3, so A = +-0.5 / (sqrt(1/3) + eps),
    # nearly +-sqrt(3)/2; the same six roundings of numbers <= 1
    adv = atrl.group_advantages(torch.tensor([1., 0., 0., 1.]), 4)
    assert torch.allclose(adv, torch.tensor([1., -1., -1., 1.]) * (0.5 / (3 ** -0.5 + 1e-6)), atol=rounding(6), rtol=0)


@pytest.mark.parametrize("G", [2, 4, 8, 16])
def test_sample_std_advantages_are_population_ones_times_sqrt_g_minus_1_over_g(G):
    # Binary rewards, not all equal: every deviation is divided by the std; var_sample = var_pop * G / (G - 1).
    gen = torch.Generator().manual_seed(G)
    r = (torch.rand(6 * G, generator=gen) < 0.5).float()
    r[::G], r[1::G] = 1.0, 0.0                                       # no all-equal group
    pop = atrl.group_advantages(r, G, std="population", eps=0.0)
    sample = atrl.group_advantages(r, G, eps=0.0)
    # binary rewards and G a power of 2: means, deviations, squares and their sums are exact in float32; each std
    # rounds at its division (none by G) and its sqrt, each advantage at its division, the right side at the float32
    # constant and the product: at most 7 roundings, relative
    assert torch.allclose(sample, pop * ((G - 1) / G) ** 0.5, rtol=rounding(7), atol=0)
    # torch.std's default is the sample std; the same ops in the same order (+ eps 0.0 is exact): bit for bit
    assert torch.equal(sample, (r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True)).div(
        r.view(-1, G).std(1, keepdim=True)).view(-1))


def test_all_equal_group_gives_exact_zero_not_nan():
    rewards = torch.tensor([0.3, 0.3, 0.3, 1.0, 0.0, 0.5])          # first group constant
    for scale in ("group", "batch", "none"):
        adv = atrl.group_advantages(rewards, 3, scale=scale)
        assert torch.isfinite(adv).all()
        assert (adv[:3] == 0).all()
    assert (atrl.group_advantages(torch.zeros(8), 4) == 0).all()   # the whole batch constant


def test_group_advantages_scales_against_hand_computation():
    r = torch.tensor([1., 0., 0., 0., 1., 1.])                      # groups of 3: means 1/3 and 2/3
    centred = torch.tensor([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3])
    # the mean of 3 (2 additions, 1 division), the centring and `centred`'s own rounding: 5 roundings of <= 1
    assert torch.allclose(atrl.group_advantages(r, 3, scale="none"), centred, atol=rounding(5), rtol=0)
    # population: all six have mean 1/2 and squared deviations 1/4, so var = 1/4, std = 1/2; the group (1, 0, 0)
    # has squared deviations 4/9, 1/9, 1/9: var = (6/9) / 3 = 2/9, std = sqrt(2)/3. Sample (the default): the same
    # sums over n - 1: batch var = (6/4) / 5 = 3/10, group var = (6/9) / 2 = 1/3
    for std, correction, group_std in (("population", 0, 2 ** 0.5 / 3), ("sample", 1, 3 ** -0.5)):
        batch_std = r.std(correction=correction)                     # the same std bits on both sides
        # the 5 roundings above over the std (>= 0.5), and each side's division: <= 7 of <= 4/3
        assert torch.allclose(atrl.group_advantages(r, 3, scale="batch", std=std), centred / (batch_std + 1e-6),
                              atol=rounding(7, 4 / 3), rtol=0)
        # and the group's std in float32: its mean (3), 3 differences and squares, their sum (2), a division and a
        # sqrt: 16 roundings of numbers <= |2/3| / 0.47 = 1.42
        assert torch.allclose(atrl.group_advantages(r, 3, scale="group", std=std), centred / (group_std + 1e-6),
                              atol=rounding(16, 1.42), rtol=0)


def test_group_advantages_refuses_bad_shapes():
    with pytest.raises(ValueError, match="group_size=1"):
        atrl.group_advantages(torch.tensor([1., 0.]), 1)
    with pytest.raises(ValueError, match="5 rewards.*group_size=2"):
        atrl.group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="scale"):
        atrl.group_advantages(torch.ones(4), 2, scale="std")
    with pytest.raises(ValueError, match="std='unbiased'"):
        atrl.group_advantages(torch.ones(4), 2, std="unbiased")


# --------------------------------------------------------------------------------------------------
# anchors
# --------------------------------------------------------------------------------------------------

def test_select_anchors_matches_sorted_oracle():
    gen = torch.Generator().manual_seed(1)
    rho = torch.randint(0, 5, (20, 30), generator=gen).float()       # many ties on purpose
    mask = torch.rand(20, 30, generator=gen) > 0.3
    anchors = atrl.select_anchors(rho, mask, frac=0.2)
    for b in range(20):
        valid = [t for t in range(30) if mask[b, t]]
        count = min(len(valid), max(1, int(0.2 * len(valid) + 0.5)))
        # Python's sort is stable: equal rho keep position order, as promised.
        expected = sorted(sorted(valid, key=lambda t: -rho[b, t].item())[:count])
        assert anchors[b].nonzero().flatten().tolist() == expected


def test_select_anchors_edge_cases():
    mask = torch.tensor([[True, True, True, False], [False] * 4, [True, False, False, False]])
    rho = torch.tensor([[.2, .2, .2, 9.], [1., 2., 3., 4.], [0., 5., 5., 5.]])
    anchors = atrl.select_anchors(rho, mask, frac=0.15)
    # constant rho -> the first token; all-masked -> none; padding never chosen even with large rho
    assert anchors.tolist() == [[True, False, False, False], [False] * 4, [True, False, False, False]]


# --------------------------------------------------------------------------------------------------
# token graph
# --------------------------------------------------------------------------------------------------

def graph_oracle(patterns, mask, k):
    """Brute force, one response at a time in float64: centred L2-normalised rows, cosine, kNN, union."""
    out = []
    for b in range(patterns.shape[0]):
        x = patterns[b][mask[b]].double()                           # (n, V)
        n = x.shape[0]
        x = x - x.mean(0)
        x = x / x.norm(dim=1, keepdim=True)
        sim = x @ x.T
        adj = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            others = sorted((j for j in range(n) if j != i), key=lambda j: -sim[i, j].item())
            for j in others[:min(k, n - 1)]:
                w = max(sim[i, j].item(), 0.0)
                adj[i, j] = adj[j, i] = w                             # union: either side's list adds the edge
        out.append(adj)
    return out


def test_token_graph_matches_brute_force_oracle():
    gen = torch.Generator().manual_seed(2)
    patterns = torch.rand(4, 25, 8, generator=gen) ** 3              # skewed rows, like attention
    mask = torch.rand(4, 25, generator=gen) > 0.2                    # padding anywhere, not only at the end
    mask[3, 5:] = False
    # one chunk / one response per chunk; k = 30 > T - 1 checks the cap at n - 1 (every positive pair)
    for chunk_entries, k in ((1 << 24, 4), (25 * 25, 4), (1 << 24, 30)):
        graphs = atrl.token_graph(patterns, mask, k=k, chunk_entries=chunk_entries)
        for b, (csr, want) in enumerate(zip(graphs, graph_oracle(patterns, mask, k))):
            got = dense_from_csr(csr, want.shape[0])
            # float32 against float64: the mean row (n terms), the norm and the cosine (V terms each) and a few
            # operations around them, on unit rows, amplified by the centring's cancellation |x| / |x - mean|
            x = patterns[b][mask[b]].double()                            # (n, V)
            kappa = float((x.norm(dim=1) / (x - x.mean(0)).norm(dim=1)).max())
            assert torch.allclose(got, want, atol=rounding(x.shape[0] + 2 * x.shape[1] + 6, kappa), rtol=0), b
            assert (got == got.T).all() and (got >= 0).all() and (got.diagonal() == 0).all()
            assert (torch.as_tensor(csr[2]) > 0).all()                # only real edges are stored


def test_token_graph_tiny_and_empty_responses():
    patterns = torch.rand(3, 1, 5)
    mask = torch.tensor([[True], [False], [True]])
    for indptr, indices, weights in atrl.token_graph(patterns, mask):
        assert len(indices) == len(weights) == 0
    assert [len(g[0]) for g in atrl.token_graph(patterns, mask)] == [2, 1, 2]


# --------------------------------------------------------------------------------------------------
# weights: every arm
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch():
    """A planted batch with padding: response 1 is 40 tokens, response 2 is empty."""
    patterns, rho, mask, planted_anchors, group = planted(B=4, T=60)
    mask[1, 40:] = False
    mask[2] = False
    return patterns, rho, mask


def test_uniform_is_exactly_one_on_valid_tokens(batch):
    patterns, rho, mask = batch
    W = atrl.token_weights(patterns, rho, mask, mode="uniform")
    assert (W[mask] == 1).all() and (W[~mask] == 0).all()


@pytest.mark.parametrize("mode", ("uniform", *atrl.PROBE_MODES))  # the peer arms keep a share unrescaled
def test_every_probe_arm_has_mean_one_zero_padding_and_no_nan(batch, mode):
    patterns, rho, mask = batch
    W = atrl.token_weights(patterns, rho, mask, mode=mode)
    assert torch.isfinite(W).all() and (W >= 0).all()
    assert (W[~mask] == 0).all()
    nonempty = mask.any(1)
    means = W.double().sum(1)[nonempty] / mask.sum(1)[nonempty]
    # _mean_one in float32: a sum of T weights (T - 1 roundings of their total, relative), then w * n / total
    assert torch.allclose(means, torch.ones_like(means), atol=rounding(mask.shape[1] + 2), rtol=0)


def test_atrl_weights_positive_and_keep_sign_of_advantage(batch):
    patterns, rho, mask = batch
    W = atrl.token_weights(patterns, rho, mask, mode="atrl")
    assert (W[mask] > 0).all()
    adv = torch.tensor([1.5, -0.5, 2.0, -1.0])
    A = atrl.token_advantages(adv, W)
    assert (torch.sign(A[mask]) == torch.sign(adv[:, None].expand_as(A)[mask])).all()
    assert (A[~mask] == 0).all()


def test_low_only_zeroes_anchor_clusters_and_anchor_only_the_rest(batch):
    patterns, rho, mask = batch
    anchors = atrl.select_anchors(rho, mask)
    cluster = atrl.cluster_tokens(patterns, mask)
    in_anchor_cluster = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        for c in cluster[b][anchors[b]].unique():
            in_anchor_cluster[b] |= cluster[b] == c
    low = atrl.token_weights(patterns, rho, mask, mode="low_only")
    high = atrl.token_weights(patterns, rho, mask, mode="anchor_only")
    assert (low[in_anchor_cluster] == 0).all() and (low[mask & ~in_anchor_cluster] > 0).all()
    assert (high[mask & ~in_anchor_cluster] == 0).all() and (high[in_anchor_cluster] > 0).all()


def test_random_keeps_the_multiset_of_atrl_weights(batch):
    patterns, rho, mask = batch
    W = atrl.token_weights(patterns, rho, mask, mode="atrl")
    shuffled = atrl.token_weights(patterns, rho, mask, mode="random", seed=0)
    for b in range(mask.shape[0]):
        assert torch.equal(W[b][mask[b]].sort().values, shuffled[b][mask[b]].sort().values)
    assert (shuffled[~mask] == 0).all()
    assert not torch.equal(W, shuffled)                              # it did move weights around
    assert torch.equal(shuffled, atrl.token_weights(patterns, rho, mask, mode="random", seed=0))


def test_tokens_arm_lifts_exactly_the_anchors(batch):
    patterns, rho, mask = batch
    anchors = atrl.select_anchors(rho, mask)
    W = atrl.token_weights(patterns, rho, mask, mode="tokens", gain=3.0)
    b = 0
    # 3n / total is rounded once, 3 x (n / total) twice: 3 u apart at most
    assert torch.allclose(W[b][anchors[b]], 3 * W[b][mask[b] & ~anchors[b]][0].expand(anchors[b].sum()),
                          rtol=rounding(2), atol=0)


def test_planted_anchors_get_their_own_clusters_and_the_largest_weights():
    patterns, rho, mask, planted_anchors, group = planted(B=3, T=60, groups=3, per_group=3)
    anchors = atrl.select_anchors(rho, mask, frac=0.15)              # 0.15 * 60 = 9 = 3 groups x 3
    assert torch.equal(anchors, planted_anchors)
    cluster = atrl.cluster_tokens(patterns, mask)
    for b in range(3):
        for g in range(3):
            members = cluster[b][group[b] == g].unique()
            assert len(members) == 1                                 # the group is one cluster ...
            assert torch.equal(group[b][cluster[b] == members[0]], torch.full((3,), g))  # ... and nothing else
    W, stats = atrl.token_weights_with_stats(patterns, rho, mask, mode="atrl")
    for b in range(3):
        assert W[b][anchors[b]].min() > W[b][~anchors[b]].max()
    # float32 throughout: each response's _mean_one (T + 2 roundings, relative) and W_mean's sum of B x T weights
    assert abs(stats["W_mean"] - 1) <= rounding(60 + 2 + 3 * 60) and stats["W_anchor_mean"] > 1.5
    assert stats["clusters"] >= 4                                    # 3 anchor groups + the diffuse rest


def test_one_token_all_masked_and_constant_rho_responses():
    # T = 1: the single token is its response's anchor and its own cluster.
    one = torch.rand(2, 1, 6)
    for mode in ("uniform", *atrl.PROBE_MODES):  # the peer arms take their own signals (tests below)
        W = atrl.token_weights(one, one.sum(-1), torch.ones(2, 1, dtype=torch.bool), mode=mode)
        assert W.tolist() == ([[0.], [0.]] if mode == "low_only" else [[1.], [1.]])
    # all-masked batch: zeros, no NaN
    patterns = torch.rand(2, 5, 4)
    for mode in ("uniform", *atrl.PROBE_MODES):
        W, stats = atrl.token_weights_with_stats(patterns, patterns.sum(-1), torch.zeros(2, 5, dtype=torch.bool),
                                                 mode=mode)
        assert (W == 0).all() and all(v == v for v in stats.values())
    # constant rho and identical rows: no edges -> singletons -> atrl equals tokens
    same = torch.full((1, 8, 4), 0.1)
    mask = torch.ones(1, 8, dtype=torch.bool)
    W = atrl.token_weights(same, same.sum(-1), mask, mode="atrl", anchor_frac=0.25)
    # singletons: each share is exactly the anchor's 0 or 1, so both arms rescale the same numbers: the same bits
    assert torch.equal(W, atrl.token_weights(same, same.sum(-1), mask, mode="tokens", anchor_frac=0.25))
    assert torch.equal(W[0, :2], torch.full((2,), 2 / 1.25))        # the anchors: 2 x 8 / 10, rounded once


def test_bad_mode_and_gain_are_refused():
    patterns = torch.rand(1, 4, 3)
    with pytest.raises(ValueError, match="mode='grpo'"):
        atrl.token_weights(patterns, patterns.sum(-1), torch.ones(1, 4, dtype=torch.bool), mode="grpo")
    with pytest.raises(ValueError, match="gain=0"):
        atrl.token_weights(patterns, patterns.sum(-1), torch.ones(1, 4, dtype=torch.bool), gain=0)


def test_per_response_seeds_make_weights_independent_of_the_batch_slot():
    g = torch.Generator().manual_seed(3)
    patterns = torch.rand(4, 12, 6, generator=g)
    rho, mask = patterns.sum(-1), torch.ones(4, 12, dtype=torch.bool)
    seeds = [11, 22, 33, 44]
    for mode in ("atrl", "random"):
        whole = atrl.token_weights(patterns, rho, mask, mode=mode, k=3, seed=seeds)
        flipped = atrl.token_weights(patterns.flip(0), rho.flip(0), mask, mode=mode, k=3, seed=seeds[::-1])
        assert torch.equal(whole, flipped.flip(0)), mode
        one = atrl.token_weights(patterns[2:3], rho[2:3], mask[2:3], mode=mode, k=3, seed=[33])
        assert torch.equal(whole[2:3], one), mode


# --- the peer selectors: VPPO's visual dependency and the high-entropy minority ---------------------------

def test_top_fraction_keeps_ceil_of_the_share_by_score_never_padding():
    g = torch.Generator().manual_seed(5)
    score = torch.rand(6, 13, generator=g)
    mask = torch.arange(13)[None, :] < torch.tensor([13, 10, 5, 1, 0, 7])[:, None]
    for frac in (0.2, 0.4, 1.0):
        kept = atrl.top_fraction(score, mask, frac)
        for b in range(6):
            n = int(mask[b].sum())
            valid = score[b, :n]
            expect = set(valid.argsort(descending=True)[:math.ceil(frac * n)].tolist())  # brute force
            assert set(kept[b].nonzero().flatten().tolist()) == expect, (frac, b)


def test_visual_dependency_is_the_k3_kl_of_the_two_log_probs():
    g = torch.Generator().manual_seed(1)
    logp, perturbed = -torch.rand(3, 9, generator=g) * 3, -torch.rand(3, 9, generator=g) * 3
    d = perturbed - logp
    # each side: exp or expm1 (1 ulp) and two subtractions, on numbers up to exp(d) + |d| + 1, element by element
    assert ((atrl.visual_dependency(logp, perturbed) - (torch.expm1(d) - d)).abs()
            <= rounding(3, 1) * (d.exp() + d.abs() + 1)).all()
    assert (atrl.visual_dependency(logp, logp) == 0).all()   # the image did not matter: no dependency
    assert atrl.visual_dependency(torch.zeros(1, 1), torch.full((1, 1), 50.)).item() == 10.0   # clamped


def test_vppo_shaping_averages_one_and_orders_responses_by_their_dependency():
    g = torch.Generator().manual_seed(2)
    dep = torch.rand(8, 11, generator=g) ** 3
    mask = torch.arange(11)[None, :] < torch.tensor([11, 9, 8, 11, 3, 11, 6, 0])[:, None]
    factor = atrl.vppo_shaping(dep, mask, beta_min=0.8)
    valid = mask.any(1)
    S = (dep * mask).sum(1) / mask.sum(1).clamp_min(1)
    s = float(((S[valid] - S[valid].min()) / (S[valid].max() - S[valid].min())).mean())  # mean of the normalised S
    # exactly 1 - (1 - beta_min) 1e-8 / (mean s + 1e-8) (the guard), up to rounding: the mean of s over the 7
    # responses (7), the factor (4) and this mean (7), on factors <= 0.8 + 0.2 / mean s
    assert factor[valid].mean().item() == pytest.approx(1 - 0.2 * 1e-8 / (s + 1e-8), abs=rounding(18, 0.8 + 0.2 / s))
    order = S[valid].argsort()
    assert factor[valid][order].diff().min() >= 0          # more dependency, larger factor
    assert factor[valid].min().item() == torch.tensor(0.8).item()  # s = 0: beta_min itself, in float32
    assert factor[~valid].item() == 1.0
    assert torch.equal(atrl.vppo_shaping(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.bool)), torch.ones(3))
    # the default minimum is VPPO's released scripts' 0.9: the least image-dependent response keeps exactly it
    assert atrl.vppo_shaping(dep, mask)[valid].min().item() == pytest.approx(0.9)


def test_vppo_and_entropy_arms_keep_their_top_tokens_unrescaled():
    g = torch.Generator().manual_seed(4)
    mask = torch.arange(10)[None, :] < torch.tensor([10, 6, 8])[:, None]
    signal = torch.rand(3, 10, generator=g)
    W, stats = atrl.token_weights_with_stats(None, None, mask, mode="entropy", entropy=signal)
    assert torch.equal(W.bool(), atrl.top_fraction(signal, mask, 0.2)) and set(W.unique().tolist()) <= {0.0, 1.0}
    assert stats["anchor_frac"] == float(W.sum() / mask.sum())       # the same two counts, divided once: same bits
    W, _ = atrl.token_weights_with_stats(None, None, mask, mode="vppo", dependency=signal)
    kept = atrl.top_fraction(signal, mask, 0.4)
    assert torch.equal(W > 0, kept)
    for b in range(3):  # one factor per response: VPPO scales the response's advantage, then filters its tokens
        assert torch.equal(W[b][kept[b]], atrl.vppo_shaping(signal, mask)[b].expand(int(kept[b].sum())))  # 1 x f


# --- the oracle arms (VisualMath v3: every token's class is known) -------------------------------------------

def classes_batch(seed=6):
    """Random perception / noise masks (disjoint) over a padded batch; response 3 is empty."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(20)[None, :] < torch.tensor([20, 14, 9, 0])[:, None]
    kind = torch.randint(0, 4, (4, 20), generator=g)              # 0 perception, 1 noise, 2-3 the rest
    return mask, (kind == 0) & mask, (kind == 1) & mask


@pytest.mark.parametrize("mode", atrl.CLASS_MODES)
def test_every_oracle_arm_has_mean_one_and_zero_padding(mode):
    mask, perception, noise = classes_batch()
    W = atrl.token_weights(None, None, mask, mode, perception=perception, noise=noise, seed=[1, 2, 3, 4])
    assert torch.isfinite(W).all() and (W >= 0).all() and (W[~mask] == 0).all()
    means = W.double().sum(1)[:3] / mask.sum(1)[:3]
    assert torch.allclose(means, torch.ones(3, dtype=torch.float64), atol=rounding(20 + 2), rtol=0)  # as above


def test_oracle_arms_zero_the_noise_and_lift_the_perception_tokens():
    mask, perception, noise = classes_batch()
    masked = atrl.token_weights(None, None, mask, "oracle_mask", perception=perception, noise=noise)
    lifted = atrl.token_weights(None, None, mask, "oracle_up", gain=3.0, perception=perception, noise=noise)
    both = atrl.token_weights(None, None, mask, "oracle", gain=3.0, perception=perception, noise=noise)
    rest = mask & ~noise & ~perception
    for b in range(3):
        assert (masked[b][noise[b]] == 0).all() and (masked[b][mask[b] & ~noise[b]] == masked[b][rest[b]][0]).all()
        assert torch.allclose(lifted[b][perception[b]], 3 * lifted[b][rest[b]][0].expand(int(perception[b].sum())),
                              rtol=rounding(2), atol=0)  # 3n / total against 3 x (n / total): 3 u
        assert (both[b][noise[b]] == 0).all()
        assert torch.allclose(both[b][perception[b]], 3 * both[b][rest[b]][0].expand(int(perception[b].sum())),
                              rtol=rounding(2), atol=0)


def test_random_mask_zeroes_as_many_tokens_as_the_oracle_elsewhere():
    mask, perception, noise = classes_batch()
    W = atrl.token_weights(None, None, mask, "random_mask", perception=perception, noise=noise, seed=[5, 6, 7, 8])
    zeroed = mask & (W == 0)
    assert torch.equal(zeroed.sum(1), noise.sum(1))                  # the same size, response by response
    assert not torch.equal(zeroed, noise)                            # other places
    again = atrl.token_weights(None, None, mask, "random_mask", perception=perception, noise=noise, seed=[5, 6, 7, 8])
    other = atrl.token_weights(None, None, mask, "random_mask", perception=perception, noise=noise, seed=[9, 6, 7, 8])
    assert torch.equal(W, again) and not torch.equal(W[0], other[0]) and torch.equal(W[1:], other[1:])


def test_oracle_arms_refuse_to_run_without_classes():
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs the token classes"):
        atrl.token_weights(None, None, mask, "oracle")
    W, stats = atrl.token_weights_with_stats(None, None, mask, "oracle", perception=torch.tensor([[1, 0, 0, 0]]).bool(),
                                             noise=torch.zeros(1, 4, dtype=torch.bool))
    assert stats["anchor_frac"] == 0.25 and stats["W_anchor_mean"] == torch.tensor(1.6).item()  # 8 / 5, rounded once
