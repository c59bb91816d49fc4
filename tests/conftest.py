"""What several test files need, written once: fixtures (pytest passes them by name) and plain helpers.

Fixtures:
    random_checkpoint   a random tiny Qwen2.5-VL (tiny.make_random_checkpoint, seed 0: tokenizer, image
                        processor, weights), built once per session. NOTE: shared, so read it, never write to
                        it -- a test that changes a checkpoint copies it first (as warm_checkpoint does).
    warm_checkpoint     a copy of it after a few seconds of SFT: long enough that the model writes the answer
                        format some of the time, so sampled groups have unequal rewards (non-zero advantages)
                        and the RL tests exercise a real gradient.
    tiny_checkpoint     tiny_checkpoint(kind, warm=False): the same two for each kind of TINY_KINDS -- the tiny
                        Qwen2.5-VL above, a tiny Qwen3-VL with head_dim = hidden / heads, and one whose head_dim
                        is not (as Qwen3-VL-4B's) -- each built once per session, when a test first asks for it.
    doctest_examples    run(module, names): runs the docstring examples of module.<name> for each name.

Helpers (imported: `from conftest import png_bytes`; tests/ is on sys.path, as test_runs.py's import of
test_train shows):
    REPO                        the repository root (cwd of every script run as a subprocess)
    TINY_KINDS                  kind -> (model_type, head_dim, warm-up steps) of the tiny checkpoints of both families
    png_bytes(mode, size, colour)   a one-colour PNG file's bytes, for image columns of benchmark fixtures
    torchrun_command(nproc)         the command prefix that starts a script under torchrun with nproc processes
    dense_from_csr(csr, n)      a CSR triple (indptr, indices, weights) as a dense (n, n) float64 tensor
    rounding(terms, magnitude, dtype)   terms x magnitude x eps: a test's float tolerance, derived (STYLE 17)

Run: `python -m pytest -q tests` (this file is loaded by pytest, never run by itself).
"""
import contextlib
import doctest
import io
import os
import shutil
import socket
import sys

import PIL.Image
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the tests import the repository's modules (atrl, rollout, ...) by name
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of pytest.ini's parallel workers: one core's worth of threads each
    torch.set_num_threads(1)

# ------------------------------------------------------------------------------------------------ helpers


def png_bytes(mode="RGB", size=(6, 4), colour=0):
    """A size[0] x size[1] PNG of one colour in PIL `mode` ("P" gets a two-colour palette), as file bytes."""
    img = PIL.Image.new(mode, size, colour)
    if mode == "P":
        img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def torchrun_command(nproc):
    """[python, -m, torch.distributed.run, ...]: append the script and its arguments.

    The master port is one the OS has free right now, so that torchrun tests running at once (pytest-xdist's
    workers, two CI jobs, a developer's run beside CI) never meet on one port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port", str(port)]


def dense_from_csr(csr, n):
    """CSR triple (numpy arrays or tensors) -> dense (n, n) float64 tensor; absent entries are 0."""
    indptr, indices, weights = (torch.as_tensor(a) for a in csr)
    adj = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(n), indptr[1:] - indptr[:-1])  # (nnz,) row of each entry
    adj[rows, indices.long()] = weights.double()
    return adj


def rounding(terms, magnitude=1.0, dtype=torch.float32):
    """terms x magnitude x eps(dtype): the most rounding can move a result computed with `terms` rounded
    operations in a row -- the terms of its longest accumulation plus the operations around it -- on numbers
    whose sizes add up to at most `magnitude`. A sum of n floats is off by at most (n - 1) u sum |x_i| (Higham,
    Accuracy and Stability of Numerical Algorithms, 2002, Eq. 3.5; u = eps / 2), whatever the order the kernel
    adds them in, so a bound counted this way holds on every CPU, kernel set (ATEN_CPU_CAPABILITY, MKL, oneDNN)
    and thread count; eps = 2u also pays the 1 / (1 - n u) of the exact bound. Each use says what it counted.

    >>> rounding(10, 2.0) == 20 * 2 ** -23
    True
    """
    return terms * float(magnitude) * torch.finfo(dtype).eps


def bf16_attention():
    """A context in which CPU bf16 attention runs: torch's default sdpa kernel, or its math reference where that
    raises. torch 2.13's CPU flash kernel packs bf16 blocks of >= 64 query rows with a brgemm that exists only on
    AVX-512 (under ATEN_CPU_CAPABILITY=default or avx2 it raises `RuntimeError: pack_vnni2 is only supported when
    avx512 is supported`, #33), so a tiny call of that size tells which one this process can run. Used where a test
    compares two bf16 computations that must run the same kernel (the engine against generate, the vision windows)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.zeros(1, 1, 256, 32, dtype=torch.bfloat16)
    try:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError:
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ fixtures


# kind -> (model_type, head_dim, warm-up SFT steps). The warm-up is long enough that the model writes the answer
# format some of the time, so that train.py's rewards differ within groups (measured: after 40 steps the Qwen2.5-VL
# and the head_dim-64 Qwen3-VL do; the head_dim-32 Qwen3-VL init learns slower: after 80 steps its 2-step test run
# still had format 0 in all 16 rollouts (no gradient), after 120 format 0.75 and 0.25)
TINY_KINDS = {"qwen2_5_vl": ("qwen2_5_vl", None, 40),  # the embedded default's family
              "qwen3_vl": ("qwen3_vl", None, 120),     # head_dim 32 = hidden / heads (as Qwen3-VL-2B and 8B)
              "qwen3_vl_wide": ("qwen3_vl", 64, 40)}   # head_dim 64 != 128 / 4 (as Qwen3-VL-4B: 128 != 2560 / 32)


def _warm_up(random_dir, path, steps=40):
    """A copy of random_dir after `steps` SFT steps on two-slot questions (a few seconds), saved into path."""
    from tasks import visualmath

    import rollout
    from models import family

    shutil.copytree(random_dir, path, dirs_exist_ok=True)  # the SFT below overwrites the weights
    model = family.load_model(path, attn_implementation=None)  # None: transformers' default, as always here
    tokenizer, image_processor = family.load_processor(path)
    examples = visualmath.make_slots(64, seed=123)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for step in range(steps):
        rows = [examples[(step * 16 + i) % len(examples)] for i in range(16)]
        loss = model(**rollout.sft_batch(tokenizer, image_processor, rows)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(kind, warm=False) -> the path of a tiny checkpoint of TINY_KINDS[kind], random (seed 0) or
    warmed up by _warm_up; each built once per session, on first use. Read them, never write to them."""
    from models import tiny

    built = {}

    def get(kind, warm=False):
        if (kind, warm) not in built:
            path = str(tmp_path_factory.mktemp(f"{'warm' if warm else 'random'}-{kind}"))
            model_type, head_dim, steps = TINY_KINDS[kind]
            built[kind, warm] = _warm_up(get(kind), path, steps) if warm else \
                tiny.make_random_checkpoint(path, seed=0, model_type=model_type, head_dim=head_dim)
        return built[kind, warm]
    return get


@pytest.fixture(scope="session")
def random_checkpoint(tiny_checkpoint):
    return tiny_checkpoint("qwen2_5_vl")


@pytest.fixture(scope="session")
def warm_checkpoint(tiny_checkpoint):
    return tiny_checkpoint("qwen2_5_vl", warm=True)


@pytest.fixture
def float64_norms(monkeypatch):
    """Both families' text RMSNorm computed in the dtype it is given. transformers' Qwen2_5_VLRMSNorm and
    Qwen3VLTextRMSNorm round their input to float32 and back, so a model cast to float64 still rounds every hidden
    state to float32 once per norm; with this fixture a float64 model runs its text decoder, forward and backward,
    in float64 throughout. (The rotary angles are float32, and the vision tower rounds its q and k to float32: the
    same bits on both sides of a comparison whose images and positions are the same.)"""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25
    from transformers.models.qwen3_vl import modeling_qwen3_vl as qwen3

    def forward(self, hidden):  # the same formula, without the round trip
        return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(qwen25.Qwen2_5_VLRMSNorm, "forward", forward)
    monkeypatch.setattr(qwen3.Qwen3VLTextRMSNorm, "forward", forward)


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
