"""The policy loss in atrl.py: PPO-clip with clip-higher and dual-clip, KL estimators, and loss aggregation
that is exact under gradient accumulation (checked against autograd on the whole batch)."""
import math

import pytest
import torch

from atrl import aggregate_loss, kl_penalty, ppo_clip_loss
from conftest import rounding

MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def reference_loss(loss_tok, mask, mode, max_len):
    """The batch loss written directly from its definition, no shared denominators."""
    if mode == "token_mean":
        return loss_tok[mask.bool()].mean()
    rows = [loss_tok[i][mask[i].bool()] for i in range(len(mask)) if mask[i].any()]
    if mode == "seq_mean_token_mean":
        return torch.stack([r.mean() for r in rows]).mean()
    return torch.stack([r.sum() for r in rows]).sum() / (len(rows) * max_len)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("micro", [1, 2, 3, 6])
def test_micro_batch_shares_sum_to_the_whole_batch_gradient(mode, micro):
    # float64: the two sides add the same terms in other orders, so they agree to float64 rounding (bounds below)
    g, f64 = torch.Generator().manual_seed(0), torch.float64
    B, T = 6, 7
    theta = torch.randn(B, T, generator=g, dtype=f64, requires_grad=True)   # stands in for log-probs
    old = theta.detach() + 0.1 * torch.randn(B, T, generator=g, dtype=f64)
    adv = torch.randn(B, T, generator=g, dtype=f64)
    lengths = torch.tensor([7, 1, 4, 0, 5, 3])                     # ragged, one empty response
    mask = (torch.arange(T)[None] < lengths[:, None]).to(f64)
    n_tokens, n_seqs = mask.sum().item(), (mask.sum(-1) > 0).sum().item()

    whole = reference_loss(ppo_clip_loss(theta, old, adv)[0], mask, mode, T)
    (grad_whole,) = torch.autograd.grad(whole, theta)
    total, grad_acc = 0.0, torch.zeros_like(theta)
    for i in range(0, B, micro):                                   # gradient accumulation
        part = aggregate_loss(ppo_clip_loss(theta[i:i + micro], old[i:i + micro], adv[i:i + micro])[0],
                              mask[i:i + micro], mode, n_tokens, n_seqs, T)
        grad_acc += torch.autograd.grad(part, theta)[0]
        total += part.item()
    # both are one linear combination of the B x T token losses: at most B T + B + 4 roundings (the sums, the
    # divisions, the micro-batches' sum) relative to its terms' magnitudes -- the same combination of |l|
    magnitude = reference_loss(ppo_clip_loss(theta, old, adv)[0].abs(), mask, mode, T).item()
    assert abs(total - whole.item()) <= rounding(B * T + B + 4, magnitude, f64)
    # a token's gradient is one chain of <= 8 operations on each side (ratio, clip, max, mask, the divisions);
    # the accumulation adds it to zeros, exactly
    torch.testing.assert_close(grad_acc, grad_whole, rtol=rounding(8, 1, f64), atol=0)


def test_per_micro_batch_mean_would_be_wrong():
    """The bug the global denominators prevent: averaging inside micro-batches re-weights tokens."""
    loss = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    exact = sum(aggregate_loss(loss[i:i + 1], mask[i:i + 1], "token_mean", 4, 2, 3) for i in range(2))
    naive = sum((loss[i] * mask[i]).sum() / mask[i].sum() for i in range(2)) / 2
    assert exact.item() == 7 / 4 and naive.item() == 2.5            # small dyadic numbers: every step is exact


def test_clip_higher_lets_positive_advantages_grow_further_than_negative_ones_shrink():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.25, 1.25, 0.75, 0.75]]))   # r = 1.25 (inside 1.28) and 0.75 (outside 0.8)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # A > 0, r = 1.25 < 1.28: not clipped;  A < 0, r = 0.75 < 0.8: clipped at 0.8
    assert clipped.tolist() == [[0.0, 0.0, 0.0, 1.0]]
    # r = exp(log r): a log and an exp, 1 ulp each; the clipped 0.8 is the clip bound itself
    torch.testing.assert_close(loss, torch.tensor([[-1.25, 1.25, -0.75, 0.8]]), rtol=rounding(2), atol=0)
    # symmetric clipping at 0.2 would have clipped the first token too
    assert ppo_clip_loss(logp, old, adv, 0.2, 0.2)[1][0, 0] == 1.0


def test_dual_clip_caps_the_loss_of_exploded_negative_tokens():
    logp, old = torch.log(torch.tensor([[10.0, 10.0]])), torch.zeros(1, 2)
    adv = torch.tensor([[-1.0, 1.0]])
    plain, _ = ppo_clip_loss(logp, old, adv)
    capped, _ = ppo_clip_loss(logp, old, adv, dual_clip=3.0)
    # exp(log 10): 2 ulps at most; the cap -A x 3 is exact
    assert plain[0, 0].item() == pytest.approx(10.0, rel=rounding(2), abs=0) and capped[0, 0].item() == 3.0
    assert capped[0, 1] == plain[0, 1]                             # positive advantages untouched


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_the_true_kl_on_average(estimator):
    """Sample tokens from p, average the estimator, compare with KL(p || q) computed exactly."""
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.4, 0.4, 0.2])
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=g)
    values = kl_penalty(p.log()[tokens], q.log()[tokens], estimator).double()   # the mean in float64: 2e5 terms
    est, se = values.mean().item(), values.std().item() / len(values) ** 0.5
    true = (p * (p / q).log()).sum().item()
    expected = true  # the estimator's own expectation under p, computed exactly
    if estimator == "k2":  # biased, but close for nearby policies: E_p[(log q/p)^2 / 2] is within 20% of the KL
        expected = (p * 0.5 * (q / p).log() ** 2).sum().item()
        assert abs(expected - true) <= 0.2 * true
    assert abs(est - expected) <= 4 * se  # a sample mean: 4 standard errors (a fresh seed fails 1 time in 16,000)
    if estimator == "k3":
        assert (kl_penalty(p.log()[tokens], q.log()[tokens], "k3") >= 0).all()


def test_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="mean"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "mean", 1, 1, 1)
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")
    assert not math.isnan(aggregate_loss(torch.zeros(1, 1), torch.zeros(1, 1), "token_mean", 1, 1, 1).item())
