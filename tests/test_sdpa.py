"""ops/sdpa.py: the attention-kernel choice, prediction and record, on the CPU (the CUDA choice with its cuDNN
version stood in for). Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_sdpa.py
"""
import doctest

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ops import sdpa


def test_docstring_examples():
    assert doctest.testmod(sdpa, raise_on_error=False) == (0, 6)


@pytest.mark.parametrize("mode, runtime, expected", [("auto", 92000, False), ("auto", 92500, False),  # 2.13: 9.20
                                                     ("auto", 92600, True), ("auto", None, False),
                                                     ("on", 92000, True), ("off", 92600, False)])
def test_cudnn_attention_is_off_below_the_fixed_version_unless_told(monkeypatch, mode, runtime, expected):
    # CUDA stood in for: the runtime cuDNN version and the process-wide switch sdpa reads
    chosen = []
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: runtime)
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", chosen.append)
    got = sdpa.setup(torch.device("cuda"), mode)
    assert chosen == [expected] and got["cudnn_sdpa"] is expected
    assert got["line"].startswith(f"device cuda: sdpa's cuDNN attention {'on' if expected else 'off'} (")
    assert ("pytorch#196678" in got["line"]) == (mode == "auto")


def test_setup_changes_nothing_on_the_cpu_and_refuses_a_bad_mode():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    assert sdpa.setup(torch.device("cpu"), "on")["cudnn_sdpa"] is None
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with pytest.raises(ValueError, match="cudnn='maybe'"):
        sdpa.setup(torch.device("cpu"), "maybe")


def test_prediction_and_record_agree_on_what_ran():
    # the kernel predicted for exact tensors is the one recorded running, forward and backward; forcing math
    # leaves no fused kernel to record
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    kernels = sdpa.Kernels()
    with kernels.record("forward"):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with kernels.record("backward"):
        out.sum().backward()
    with kernels.record("skipped", on=False):
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with kernels.once("forward"), sdpa_kernel([SDPBackend.MATH]):  # recorded already: not again
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([SDPBackend.MATH]), kernels.record("math"):
        assert sdpa.predict(q, k, v, mask) == "math"
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert sdpa.predict(q, k, v, mask) == "flash (CPU)"
    assert kernels.summary() == {"forward": ["flash (CPU)"], "backward": ["flash (CPU) backward"],
                                 "math": [sdpa.NONE_FUSED]}
    assert kernels.name("backward") == "flash (CPU) backward" and kernels.name("rollout") == "not recorded"


def test_summary_names_the_probe_kernels_and_why_it_read_rows():
    class Probe:  # what connectivity.Probe keeps
        kernels = {"_scaled_dot_product_cudnn_attention", None}
        lse_rejections = {("_scaled_dot_product_cudnn_attention", torch.bfloat16, "cuda"): "log-sum-exp of shape ..."}
    summary = sdpa.Kernels({"cudnn_sdpa": False}).summary(Probe())
    assert summary == {"cudnn_sdpa": False, "probe": ["cudnn", sdpa.NONE_FUSED],
                       "probe_row_reads": {"cudnn bfloat16 cuda": "log-sum-exp of shape ..."}}
