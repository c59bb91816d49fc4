"""ops/sdpa.py -- which kernel torch's scaled_dot_product_attention runs: choosing it, predicting it, recording it.

`F.scaled_dot_product_attention` (sdpa), which transformers' "sdpa" attention calls, runs each call on one of
several kernels, picked per call from the device, dtype, mask, head dim and a priority order:

    flash         _scaled_dot_product_flash_attention (CUDA fp16/bf16; no mask: causal or nothing) and
                  _scaled_dot_product_flash_attention_for_cpu ("flash (CPU)": any mask, every dtype)
    efficient     _scaled_dot_product_efficient_attention (CUDA; a mask as an additive bias; fp32 too)
    cudnn         _scaled_dot_product_cudnn_attention (CUDA fp16/bf16, sm80+; a mask; a graph built per shape)
    overrideable  _scaled_dot_product_fused_attention_overrideable (XPU, HPU, out-of-tree backends)
    math          _scaled_dot_product_attention_math: plain ops (a dispatch mode sees its bmm/softmax, not it)

On Hopper with torch >= 2.11 (whose bundled cuDNN is > 9.15) the first CUDA sdpa call puts cuDNN first
(sdp_utils.cpp, check_prefer_cudnn_attention): bf16 training forwards, masked or not, then run on cuDNN.
This file gives a trainer three things:

    setup(device, cudnn)   the process-wide choice: cuDNN attention on or off (auto: off below cuDNN 9.26)
    predict(q, k, v, ...)  the kernel sdpa will run for these tensors (torch._fused_sdp_choice: sdpa's own choice)
    Kernels.record(phase)  the kernels that did run inside a block, forward and backward, by a dispatch mode

Why cuDNN is off by default below cuDNN 9.26 (pytorch#196678, huggingface/trl#7181; fixed by cuDNN 9.26,
pytorch#196861): cuDNN's sm90 backward gives NaN grad_q when (1) an explicit mask is passed, (2) S % 128 == 64
and (3) some query row's log-sum-exp is below -88.7 (exp overflows in the kernel's unmasked K/V tail). (1) holds
for every left-padded RL micro-batch (transformers then passes a 4-D bool mask), (2) for one length in 128, (3)
for Qwen2.5's massive-activation heads (TRL's report) and possibly for fully masked pad rows. The step is then
silently skipped (train.py counts non-finite steps). The choice is process-wide (`enable_cudnn_sdp`), not an
`sdpa_kernel` block around the forward: with gradient checkpointing the forward is re-run inside backward(),
outside such a block, and would pick cuDNN again. Padding S away from 64 mod 128 instead would keep cuDNN, but
touches every batch builder, costs memory, and guards against this one bug only. The runtime version counts, not
torch's: a system cuDNN on LD_LIBRARY_PATH can shadow the wheel's. Efficient attention, which masked batches then
run, is the kernel every other peer falls back to (TRL, kyutai's pocket-tts saw no throughput change).

References: torch/nn/attention/__init__.py (sdpa_kernel, SDPBackend); aten/src/ATen/native/transformers/cuda/
sdp_utils.cpp (the priority order and each kernel's filters); torch/_meta_registrations.py (the outputs).
Tests: tests/test_sdpa.py (CPU: setup is a no-op, predict and record name the CPU kernel and its backward).
"""
import contextlib

import torch
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import TorchDispatchMode

CUDNN_FIXED = 92600  # torch.backends.cudnn.version() of cuDNN 9.26, the first without pytorch#196678's NaN
CHOICES = ("auto", "on", "off")  # train.py --sdpa_cudnn

# aten op -> the kernel's short name; the backward op of each is the same name + " backward"
KERNELS = {"_scaled_dot_product_flash_attention": "flash",
           "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
           "_scaled_dot_product_efficient_attention": "efficient",
           "_scaled_dot_product_cudnn_attention": "cudnn",
           "_scaled_dot_product_fused_attention_overrideable": "overrideable"}
NONE_FUSED = "math/eager"  # a block that ran attention but no fused kernel (math is made of plain ops)


def kernel_name(op):
    """The short name of an aten op's kernel ("cudnn", "efficient backward", ...), or None for other ops.

    >>> kernel_name("_scaled_dot_product_efficient_attention_backward"), kernel_name("mm")
    ('efficient backward', None)
    """
    if op.endswith("_backward") and op[:-len("_backward")] in KERNELS:
        return KERNELS[op[:-len("_backward")]] + " backward"
    return KERNELS.get(op)


def setup(device, cudnn="auto"):
    """Choose, for this whole process, whether sdpa may run cuDNN attention; returns what was chosen (for the log).

    cudnn: "auto" = on only if the runtime cuDNN is 9.26 or later (the backward NaN fixed), "on", "off".
    A no-op without CUDA (the CPU has its flash kernel and math only)."""
    if cudnn not in CHOICES:
        raise ValueError(f"cudnn={cudnn!r}: use one of {', '.join(CHOICES)}")
    if device.type != "cuda":
        return {"cudnn_sdpa": None, "cudnn_runtime": None, "line": f"device {device}: sdpa runs flash (CPU) or math"}
    runtime = torch.backends.cudnn.version() or 0  # None when torch finds no cuDNN
    use = runtime >= CUDNN_FIXED if cudnn == "auto" else cudnn == "on"
    torch.backends.cuda.enable_cudnn_sdp(use)
    why = ("--sdpa_cudnn on" if cudnn == "on" else "--sdpa_cudnn off" if cudnn == "off" else
           f"cuDNN {runtime} {'>=' if use else '<'} {CUDNN_FIXED}: its backward NaN (pytorch#196678) is "
           f"{'fixed' if use else 'not fixed'}")
    return {"cudnn_sdpa": use, "cudnn_runtime": runtime,
            "line": f"device {device}: sdpa's cuDNN attention {'on' if use else 'off'} ({why})"}


def predict(query, key, value, attn_mask=None, is_causal=False, enable_gqa=False):
    """The kernel sdpa will run for exactly these tensors and arguments: its own choice (torch._fused_sdp_choice,
    which sdpa calls first), honouring the enabled kernels and their priority.

    >>> q = torch.zeros(1, 2, 4, 8)
    >>> predict(q, q, q), predict(q, q, q, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    ('flash (CPU)', 'flash (CPU)')
    """
    choice = SDPBackend(torch._fused_sdp_choice(query, key, value, attn_mask, 0.0, is_causal, enable_gqa=enable_gqa))
    if choice == SDPBackend.FLASH_ATTENTION:
        return "flash" if query.is_cuda else "flash (CPU)"
    return {SDPBackend.EFFICIENT_ATTENTION: "efficient", SDPBackend.CUDNN_ATTENTION: "cudnn",
            SDPBackend.OVERRIDEABLE: "overrideable", SDPBackend.MATH: "math"}.get(choice, "none")


class Recorder(TorchDispatchMode):
    """Counts the fused attention kernels (forward and backward aten ops) that run inside this block.

    A dispatch mode sees every aten op below autograd, so it costs Python time on every op: record a first
    step, not every step. It reaches the backward too (the autograd engine carries the mode to its threads)."""

    def __init__(self):
        super().__init__()
        self.seen = {}  # short name -> calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = kernel_name(func.overloadpacket.__name__)
        if name is not None:
            self.seen[name] = self.seen.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


class Kernels:
    """The attention kernels each phase of a run ran: {phase: set of short names}, filled by `record` blocks (or
    `once` blocks: the first block of a phase only); `setup` is what setup() chose.

    >>> kernels = Kernels()
    >>> for _ in range(3):  # a training loop: only the first pass pays for the recording
    ...     with kernels.once("forward"):
    ...         _ = torch.nn.functional.scaled_dot_product_attention(*[torch.zeros(1, 1, 2, 4)] * 3)
    >>> kernels.summary()
    {'forward': ['flash (CPU)']}
    """

    def __init__(self, setup=None):
        self.setup = setup or {}
        self.phases = {}

    @contextlib.contextmanager
    def record(self, phase, on=True):
        """Record what runs inside the block under `phase` (on=False: run it untouched)."""
        if not on:
            yield
            return
        with Recorder() as recorder:
            yield
        self.phases.setdefault(phase, set()).update(recorder.seen or {NONE_FUSED})

    def once(self, phase):
        """Record the block under `phase` if that phase has not been recorded yet; else run it untouched."""
        return self.record(phase, on=phase not in self.phases)

    def name(self, phase):
        """The kernels of one phase as one string ("efficient, efficient backward"), "not recorded" if none."""
        return ", ".join(sorted(self.phases[phase])) if phase in self.phases else "not recorded"

    def summary(self, probe=None):
        """{phase: sorted kernel names}, plus the probe's kernels and, if any, why it read whole rows (a probe is
        connectivity.Probe: its .kernels are aten op names, .lse_rejections {(kernel, dtype, device): why})."""
        out = {phase: sorted(names) for phase, names in self.phases.items()}
        out.update({"cudnn_sdpa": self.setup["cudnn_sdpa"]} if self.setup.get("cudnn_sdpa") is not None else {})
        if probe is not None:
            out["probe"] = sorted(KERNELS.get(k, NONE_FUSED) if k else NONE_FUSED for k in probe.kernels)
            out.update({"probe_row_reads": {f"{KERNELS.get(k, k)} {str(d)[6:]} {dev}": why
                                            for (k, d, dev), why in probe.lse_rejections.items()}}
                       if probe.lse_rejections else {})
        return out
