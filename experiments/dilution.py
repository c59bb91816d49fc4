"""experiments/dilution.py -- where a policy gradient's noise and signal sit, token class by token class (gate 0 of experiments/v3.py).

GRPO's gradient on a batch is a sum over tokens, so it splits exactly into one part per token class c:

    g_c = grad( -sum_{i, t in c} A_i log pi(y_it) ) / N_tokens,       g_all = sum_c g_c  (uniform's gradient)

Over K independent rollout batches from one fixed policy, each part has

    noise_c  = tr Cov_k(g_c,k) = (sum_k |g_c,k|^2 - |sum_k g_c,k|^2 / K) / (K - 1)      (unbiased)
    signal_c = mean_k <g_c,k, d>,    d = E[g_all] / |E[g_all]| from the first K/3 batches only

so "the filler carries X% of the noise and none of the signal" is a measurement, and so is what a mask would
leave: noise_kept = tr Cov(g_all - g_filler - g_grounded) (the cross terms included). The useful direction d
comes from batches the projections never see, so a class's signal is not its own noise projected on itself.
Besides the classes, the samples that leave the grammar (chains.on_grammar) form their own group: a token from
the tail of a distribution, at temperature 1, and the confusion after it.

The census of the same samples (entropy, image density rho, VPPO's dependency, what each selector picks, atrl's
W) says which tokens each arm would weight. References: gradient noise scale, McCandlish et al. 2018
(arXiv 1812.06162: tr Sigma / |G|^2); high-entropy minority, arXiv 2506.01939; VPPO, arXiv 2510.09285.
Run: `python experiments/v3.py --stop_after gate0`; tests: tests/test_experiment.py.
"""
import statistics

import torch

import atrl
import connectivity
import eval as eval_py  # model loading
import rollout
from experiments import trials
from tasks import chains, visualmath


def measure(warm, task, batches=24, census_batches=4, max_new_tokens=96, prompts=16, group=8, dtype="float32"):
    """{census: per class share / entropy / rho / dependency / picked-by-selector, snr: per group noise and signal}.

    Groups: each token class; "derailed", every token of the samples that left the grammar (chains.on_grammar);
    "noise_clean", the filler and descriptions of the samples that did not; and sums of those: all (uniform's
    gradient), noise (filler + grounded), kept (all - noise: what the oracle mask trains on), clean (all -
    derailed), kept_clean (clean - noise_clean). Noise is also measured on the trunk alone (every trainable
    parameter but the embedding matrix, which is tied to the LM head and holds one row per token).

    dtype: the model's weights, so every gradient, projection and sum. "float64" is for tests: its parts add up
    to the whole to float64 rounding, a bound that holds on every CPU (tests/test_experiment.py derives it)."""
    cpu = torch.device("cpu")
    model, tokenizer, image_processor = eval_py.load_model(warm, cpu, dtype)
    model.model.visual.requires_grad_(False)                        # as train.py (--freeze_vision 1)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    trunk = torch.cat([torch.full((p.numel(),), "embed_tokens" not in n) for n, p in named])  # (N,) bool
    rows = visualmath.make(task, prompts * batches, seed=0)      # train.py's training split of RL seed 0
    layers = list(connectivity.layer_band("middle", model.config.text_config.num_hidden_layers))
    groups = [*chains.CLASSES, "derailed", "noise_clean", "all", "noise", "kept", "clean", "kept_clean"]
    sums = {g: {"full": 0.0, "trunk": 0.0} for g in groups}         # running sums of g, per group and part
    squares = {g: {"full": [], "trunk": []} for g in groups}        # |g|^2 of every batch
    projections, census, direction, derailed_share = {g: [] for g in groups}, [], None, []
    n_direction = batches // 3
    for k in range(batches):
        chunk = [rows[i] for i in range(k * prompts, (k + 1) * prompts)]
        batch = rollout.score(rollout.sample_groups(model, tokenizer, image_processor, chunk, group,
                                                    [10_000 + k * prompts + i for i in range(prompts)], max_new_tokens, 1.0))
        classes = chains.label_batch(tokenizer, batch)                                   # (B, T)
        derailed = torch.tensor([not chains.on_grammar(t) for t in batch["texts"]])      # (B,)
        adv = atrl.group_advantages(batch["rewards"], group)                                 # (B,)
        mask = batch["response_mask"] & ~batch["truncated"][:, None]                     # (B, T) as --mask_truncated 1
        model.eval()
        logp, entropy = rollout.token_logprobs(model, batch, batch["prompt_len"])       # (B, T) with grad
        n_tokens = mask.sum().clamp_min(1)
        selections = {name: mask & (classes == c) for c, name in enumerate(chains.CLASSES)}
        selections["derailed"] = mask & derailed[:, None]
        selections["noise_clean"] = mask & chains.is_noise(classes) & ~derailed[:, None]
        grads = {}
        for name, sel in selections.items():  # each group's share of the loss -sum A log pi / N_tokens
            loss = -(adv[:, None] * logp * sel).sum() / n_tokens
            grads[name] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True,
                                                                              allow_unused=False)])
        grads["all"] = sum(grads[n] for n in chains.CLASSES)
        grads["noise"] = grads["filler"] + grads["grounded"]
        grads["kept"] = grads["all"] - grads["noise"]
        grads["clean"] = grads["all"] - grads["derailed"]
        grads["kept_clean"] = grads["clean"] - grads["noise_clean"]
        for g, vec in grads.items():
            for part, v in (("full", vec), ("trunk", vec[trunk])):
                sums[g][part] = sums[g][part] + v
                squares[g][part].append(float(v @ v))
            if direction is not None:
                projections[g].append(float(vec @ direction))
        if k + 1 == n_direction:  # the useful direction, from batches the projections never see
            direction = sums["all"]["full"] / sums["all"]["full"].norm().clamp_min(1e-30)
        derailed_share.append(float(derailed.float().mean()))
        print(f"{warm}: batch {k + 1}/{batches}, reward {float(batch['rewards'].mean()):.3f}, derailed "
              f"{derailed_share[-1]:.1%}", flush=True)
        if k < census_batches:
            census.append(census_batch(model, image_processor, batch, classes, mask, entropy.detach(), logp.detach(), layers))
    K = batches
    snr = {}
    for g in groups:
        # tr Cov over batches, unbiased: (sum |g_k|^2 - |sum g_k|^2 / K) / (K - 1)
        noise = {part: (sum(squares[g][part]) - float(sums[g][part] @ sums[g][part]) / K) / (K - 1)
                 for part in ("full", "trunk")}
        mean, half = trials.interval(projections[g])
        snr[g] = {"noise": noise["full"], "noise_trunk": noise["trunk"], "squared_norms": squares[g]["full"],
                  "signal": mean, "signal_ci": [mean - half, mean + half]}
    return {"warm": warm, "task": task, "snr": snr, "census": merge_census(census), "batches": K,
            "direction_batches": n_direction, "derailed_share": statistics.mean(derailed_share)}


@torch.no_grad()
def census_batch(model, image_processor, batch, classes, mask, entropy, logp, layers):
    """Per-token tensors of one batch, flattened over its valid tokens: class, entropy, rho, VPPO dependency, and
    which tokens each selector picks (AT-RL's anchors, entropy's top 20%, VPPO's top 40%) and W of atrl at gain 2, 4."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")}
    patterns, rho = connectivity.image_attention(model, inputs, batch["full_response_mask"], layers=layers)
    T = classes.shape[1]
    patterns, rho = patterns[:, :T].float(), rho[:, :T].float()                          # (B, T, V), (B, T)
    perturbed = rollout.token_logprobs(model, rollout.blacken_patches(batch, image_processor), batch["prompt_len"])[0]
    dependency = atrl.visual_dependency(logp, perturbed)                                 # (B, T)
    keys = batch["keys"].tolist()
    out = {"class": classes[mask], "entropy": entropy[mask], "rho": rho[mask], "dependency": dependency[mask],
           "anchor": atrl.select_anchors(rho, mask, 0.15)[mask],
           "entropy_top": atrl.top_fraction(entropy, mask, 0.2)[mask],
           "vppo_top": atrl.top_fraction(dependency, mask, 0.4)[mask]}
    for gain in (2.0, 4.0):
        out[f"w_atrl{gain:g}"] = atrl.token_weights(patterns, rho, mask, "atrl", gain=gain, seed=keys)[mask]
    return out


def merge_census(parts):
    """Per class: share of tokens, mean entropy / rho / dependency / atrl W, share picked by each selector; plus
    the precision of AT-RL's anchors against the perception tokens and against every grounded token."""
    cat = {k: torch.cat([p[k].float() for p in parts]) for k in parts[0]}
    n = len(cat["class"])
    out = {"tokens": n, "low_entropy_share": float((cat["entropy"] < 0.01).float().mean()),
           "high_entropy_share": float((cat["entropy"] > 0.5).float().mean()), "classes": {}}
    for c, name in enumerate(chains.CLASSES):
        sel = cat["class"] == c
        if sel.any():
            out["classes"][name] = {"share": float(sel.float().mean()), "high_entropy_share": float(
                ((cat["entropy"] > 0.5) & sel).float().sum() / n),
                **{k: float(cat[k][sel].mean()) for k in ("entropy", "rho", "dependency", "w_atrl2", "w_atrl4")},
                **{f"picked_{k}": float(cat[k][sel].mean()) for k in ("anchor", "entropy_top", "vppo_top")}}
    anchors, cls = cat["anchor"].bool(), cat["class"]
    grounded = (cls == chains.PERCEPTION) | (cls == chains.GROUNDED)
    out["anchor_precision"] = {"perception": float((cls[anchors] == chains.PERCEPTION).float().mean()),
                               "grounded": float(grounded[anchors].float().mean())}
    return out
