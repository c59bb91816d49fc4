"""What the benchmark scripts in bench/ share: model sizes by name, one model builder, device sync, peak memory.

The benchmarks compare arms side by side on one machine, so the parts every arm stands on live here once:

    model_sizes(name)   (text, vision) config dicts: "tiny" = models/tiny.py's model, "3b" = Qwen2.5-VL-3B-Instruct's
                        published config.json, "qwen3-4b" = Qwen3-VL-4B-Instruct's (shrink: 2 decoder layers and 1
                        vision block, a CPU smoke test); FAMILY[name] = its model_type (models/family.py)
    build_model(...)    a random model of the family from those sizes, built in place on the device and in the dtype
                        (the 3B model in bf16 never exists as a 15 GB fp32 copy on the host), embeddings tied
                        as in the real checkpoint and in models/tiny.py
    sync(device)        wait for the GPU's queue before reading a clock (a no-op on CPU)
    peak_bytes(fn, dev) torch's allocation high-water mark during fn(): torch.cuda.max_memory_allocated on GPU,
                        the profiler's memory events replayed in time order on CPU (torch has no CPU peak counter)
    machine_line(dev)   the device, load average and thread counts, printed with every table (shared machines)
    IMAGE, V_START, V_END   the token ids synthetic batches use for the image and its delimiters

Where this departs from the real model: weights are random (timing and memory depend on shapes, not values),
and the 3B model is built directly in bf16 (train.py keeps fp32 weights under bf16 autocast).

Import path: the scripts are run from the repository root as `python bench/<name>.py`. Python then puts
bench/ (the script's folder), not the root, at the head of sys.path, so `import atrl` would fail; each script
therefore imports this module first, and it puts the root in front. That is the one place the path is touched.
The scripts are named so that none is also a root module's name (bench/weights.py times atrl.py).

Run: nothing to run; `python -m pytest -q tests/test_bench.py` checks that every script starts.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # in front of bench/: a root module always wins over a script of the same name

import contextlib  # noqa: E402  (after the path: the imports below may load the repository's modules)
import threading  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import torch  # noqa: E402

# --------------------------------------------------------------------------------------------- sizes

# Qwen2.5-VL-3B-Instruct's published sizes (its config.json); the weights are random
QWEN3B_TEXT = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                   num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                   rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
QWEN3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                     fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=2048)
# Qwen3-VL-4B-Instruct's published sizes: its config.json on the hub ("transformers_version": "4.57.0.dev0"), read
# from public copies of it found by code search (two repositories vendor it verbatim: a QWEN3_VL_4B_INSTRUCT_CONFIG
# dict and a Qwen3VLConfig(...) literal), not from the hub itself (no network here) -- so treat them as the published
# values as copied, unchecked against the hub today. Those files give rope_theta 5e6 and the mRoPE layout in the
# legacy text_config.rope_scaling form, which transformers 5.x reads into rope_parameters as written below; the
# vision tower's rope is transformers' (axial). head_dim 128 != 2560 / 32 = 80: the geometry engine.py must honour.
QWEN3_4B_TEXT = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                     rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                         "mrope_section": [24, 20, 20], "mrope_interleaved": True})
QWEN3_4B_VISION = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3, patch_size=16,
                       spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                       deepstack_visual_indexes=[5, 11, 17], hidden_act="gelu_pytorch_tanh", out_hidden_size=2560)
FAMILY = {"tiny": "qwen2_5_vl", "3b": "qwen2_5_vl", "qwen3-4b": "qwen3_vl"}  # name -> model_type
IMAGE, V_START, V_END = 60, 58, 59  # token ids of synthetic batches: distinct, below every vocab used here


def model_sizes(name, shrink=False, windowed_vision=False):
    """(text, vision) size dicts of a named model: "tiny" (models/tiny.py), "3b" (Qwen2.5-VL-3B-Instruct) or
    "qwen3-4b" (Qwen3-VL-4B-Instruct; shrink as for 3b, with one DeepStack index in the one vision block).

    shrink (3b): the real attention shapes (hidden 2048, 16 query / 2 key-value heads of 128, the mRoPE
    sections) with 2 decoder layers, 1 (full-attention) vision block, a quarter of the MLP width and a 16k
    vocabulary (the tied 152k x 2048 embedding alone made a CPU step take minutes), so that the 3B code path
    runs on a CPU in seconds per step.
    windowed_vision: every vision block uses windowed attention (fullatt_block_indexes = []), as 28 of the 32
    blocks of the real tower do; full attention over a 16k-patch image would dominate everything on a CPU.

    >>> text, vision = model_sizes("3b", shrink=True)
    >>> text["num_hidden_layers"], vision["depth"], text["hidden_size"], text["vocab_size"]
    (2, 1, 2048, 16384)
    """
    if name == "tiny":
        from models import tiny
        text, vision = dict(tiny.TEXT, vocab_size=tiny.VOCAB_SIZE), dict(tiny.VISION)
    elif name == "3b":
        text, vision = dict(QWEN3B_TEXT), dict(QWEN3B_VISION)
        if shrink:
            text.update(num_hidden_layers=2, vocab_size=16384, intermediate_size=QWEN3B_TEXT["intermediate_size"] // 4)
            vision.update(depth=1, fullatt_block_indexes=[0])
    elif name == "qwen3-4b":
        text, vision = dict(QWEN3_4B_TEXT), dict(QWEN3_4B_VISION)
        if shrink:
            text.update(num_hidden_layers=2, vocab_size=16384, intermediate_size=QWEN3_4B_TEXT["intermediate_size"] // 4)
            vision.update(depth=1, deepstack_visual_indexes=[0])
        if windowed_vision:
            raise ValueError("qwen3-4b: Qwen3-VL's vision tower has no windowed attention")
        return text, vision
    else:
        raise ValueError(f"model {name!r}: use 'tiny', '3b' or 'qwen3-4b'")
    if windowed_vision:
        vision.update(fullatt_block_indexes=[])
    return text, vision


def build_model(text, vision, dtype, device, seed=0, model_type="qwen2_5_vl"):
    """A random model of the family (models/family.py's class) from size dicts, built in place in `dtype` on `device`
    (synthetic batches use the IMAGE / V_START / V_END ids above). Embeddings are tied, as in Qwen2.5-VL-3B,
    Qwen3-VL-4B and models/tiny.py."""
    import transformers
    from models import family
    model_class = getattr(transformers, family.FAMILIES[model_type][0])
    config = model_class.config_class(text_config=dict(text), vision_config=dict(vision), image_token_id=IMAGE,
                                      vision_start_token_id=V_START, vision_end_token_id=V_END,
                                      tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in place on the device and in dtype: no 15 GB fp32 copy on the host
    try:
        with torch.device(device):
            return model_class(config)
    finally:
        torch.set_default_dtype(default)


# --------------------------------------------------------------------------------------------- clocks


def sync(device):
    """Wait until the GPU has run what was queued, so a clock read after it sees the work (no-op on CPU).

    NOTE: only the main (training) thread syncs. A sync on the probe's worker thread would also wait for the
    training thread's queue, and so stall the overlap that bench/step.py measures."""
    if device.type == "cuda" and threading.current_thread() is threading.main_thread():
        torch.cuda.synchronize()


class Stages:
    """Wall seconds per named stage of one step, summed over micro-batches. On GPU every stage boundary of the
    training thread synchronises (in every arm alike), so a stage's time is its own and not its neighbour's
    queue. Stages run by the probe's worker thread (read, debias, graph, Louvain, W) are its busy time."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    @contextlib.contextmanager
    def __call__(self, name):
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def peak_bytes(fn, device):
    """Bytes torch allocated during fn() at its peak, above what was allocated before it.

    GPU: torch.cuda.max_memory_allocated after a reset. CPU: torch keeps no peak counter, so the profiler
    records every allocation (+) and free (-) and they are replayed in time order; the running sum's maximum
    is the peak. Deterministic (unlike the process's RSS), but blind to numpy/numba arrays."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def pin_malloc():
    """Fixed glibc malloc thresholds, so the allocator is not a hidden variable of the comparison.

    glibc moves its mmap threshold at run time (freeing a large mmap'd block raises it), so whether a tensor
    lands in fresh, page-faulting memory depends on the history of frees -- which a second thread changes.
    Measured here with dynamic thresholds: GRPO 23k-29k minor page faults per step, AT-RL with its worker
    thread 7k-8k; that alone made AT-RL look 3-6% *faster* than GRPO. Pinned: ~0 faults in every arm (and every
    arm ~9% faster). M_MMAP_THRESHOLD = 32 MiB (glibc's maximum), M_TRIM_THRESHOLD = 1 GiB."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "not glibc: thresholds left alone"
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    return "pinned (mmap 32 MiB, trim 1 GiB)" if ok else "mallopt refused: thresholds dynamic"


def status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: resident high-water mark)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def machine_line(device):
    """One line saying where the numbers came from: the device, the load, the thread counts."""
    load = os.getloadavg()
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    # NOTE: the configured count, not numba.get_num_threads(): that call starts numba's thread pool, which under
    # the OpenMP layer raises torch's threads too (bench/step.py's NOTE), and a header line must change nothing
    return (f"machine: {gpu}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); "
            f"torch {torch.__version__} threads {torch.get_num_threads()}, "
            f"numba threads {numba.config.NUMBA_NUM_THREADS}")
