"""Shared fixtures: a tiny Qwen2.5-VL checkpoint with a few seconds of SFT, built once per test session.

The SFT is just long enough that the model writes the answer format some of the time, so sampled groups
have unequal rewards (non-zero advantages) and the RL tests exercise a real gradient.
"""
import doctest
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def warm_checkpoint(tmp_path_factory):
    import visualmath
    import tiny
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rollout import load_processor

    path = str(tmp_path_factory.mktemp("warm"))
    tiny.make_random_checkpoint(path, seed=0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    tokenizer, image_processor = load_processor(path)
    examples = visualmath.make_slots(64, seed=123)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for step in range(40):
        rows = [examples[(step * 16 + i) % len(examples)] for i in range(16)]
        loss = model(**tiny.sft_batch(tokenizer, image_processor, rows)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return path


@pytest.fixture
def doctest_examples():
    """run(module, names) -> how many docstring examples of module.<name> ran; fails the test on a wrong one."""
    def run(module, names):
        finder, runner, tries = doctest.DocTestFinder(), doctest.DocTestRunner(), 0
        for name in names:
            for test in finder.find(getattr(module, name), name, globs=vars(module)):
                tries += runner.run(test).attempted
        assert runner.failures == 0, f"{runner.failures} docstring example(s) of {module.__name__} failed (output above)"
        return tries
    return run
