"""RL sanity: on a reward any working policy-gradient loop must learn, train.py's loop learns it, fast.

The reward (`--reward starts_with`) is +1 when a response starts with a digit, else -1. A random-init tiny
Qwen2.5-VL starts with one of the 10 digit tokens about 2% of the time (512 tokens, nearly uniform logits),
so the mean reward starts near -0.96; the loop must lift it to >= 0.9 (95% digits) within 40 steps. On seeds
0, 1 and 2 it passed 0.9 by step 28-30 and stayed at 0.97-1.00.

This is the end-to-end check that the pieces agree on a direction: group advantages (sign and baseline),
W * A, the PPO-clip loss, its aggregation over the right tokens, and the optimizer step. Each break below,
made once by hand, made it fail (mean reward of the last 5 of 40 steps):
  - advantage sign flipped (token_advantages returns -W * A):                          -1.00
  - no baseline (group_advantages without "- mean_G R"): every losing rollout pushes its own
    first token down, spreading mass over all 512 tokens instead of onto the digits:   -0.80
  - loss aggregated over tokens shifted by one (the first response token left out):   -0.95
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

STEPS = 40  # the random tiny checkpoint comes from conftest.py (random_checkpoint)


def mean_rewards(out_dir):
    lines = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))][1:]
    return [r["reward"] for r in lines if r["step"] >= 0]


@pytest.mark.parametrize("weighting", ["uniform", "atrl"])
def test_the_loop_learns_a_trivial_reward(random_checkpoint, tmp_path, weighting):
    cmd = [sys.executable, "train.py", "--model", random_checkpoint, "--out_dir", str(tmp_path),
           "--reward", "starts_with", "--dataset", "visualmath-v1", "--weighting", weighting, "--steps", str(STEPS),
           "--prompts_per_step", "8", "--group_size", "8", "--max_new_tokens", "4", "--mask_truncated", "0",
           "--lr", "3e-3", "--warmup_steps", "1", "--eval_size", "0", "--save_every", "0", "--seed", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rewards = mean_rewards(tmp_path)
    assert len(rewards) == STEPS
    assert rewards[0] <= 0.2, f"the reward must start low for the test to mean anything: {rewards[0]}"
    assert sum(rewards[-5:]) / 5 >= 0.9, f"did not learn: {[round(r, 2) for r in rewards]}"
