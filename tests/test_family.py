"""models/family.py, and the second family end to end: a tiny Qwen3-VL trains, resumes and is evaluated.

What is checked:
- the guard: a text-only checkpoint (qwen2, qwen3) and an unknown or unsupported VL family are refused from
  config.json alone -- from_pretrained is never called (a text-only checkpoint handed to a VL class first builds a
  default-sized model of billions of parameters) -- in one line naming the model_type and the supported families,
  and train.py / eval.py print that line and nothing else (no traceback);
- the load report: a Qwen3-VL folder loaded as Qwen2.5-VL (what train.py did before) is refused, naming its
  missing and unexpected tensors (and, with Qwen3-VL-4B's head_dim, the mismatched shapes); so are a checkpoint
  with a tensor deleted, renamed or reshaped, and a truncated weights file; a hub-style Qwen3-VL config.json
  (transformers 4.57's legacy rope_scaling, vision model_type "qwen3_vl") loads clean;
- the chat template is the family's (Qwen3-VL: no system turn), also for a tokenizer saved without one, and a
  tokenizer without any template is refused by encode_prompts rather than given another family's;
- pixel bounds: the defaults are one merged token .. 512 tokens of the family (Qwen2.5-VL: 784 .. 401,408, as
  before), and --min_pixels 784 is refused for a Qwen3-VL checkpoint, naming 1024;
- a tiny Qwen3-VL (head_dim != hidden / heads, as Qwen3-VL-4B's) resumes exactly, its checkpoint says qwen3_vl and
  loads clean, and eval.py (the CLI) grades it as the in-process evaluator does. The engine-vs-generate runs of both
  families are in tests/test_engine.py.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_family.py
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import rollout
from conftest import REPO
from models import family, tiny
from tasks import visualmath
from test_train import records, run_train


def text_only_checkpoint(path, model_type):
    """A config.json-only folder of a tiny text-only qwen2 / qwen3 model, as save_pretrained writes it."""
    import transformers
    cls = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[model_type]
    cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1).save_pretrained(path)
    return str(path)


@pytest.fixture
def no_loading(monkeypatch):
    """Any from_pretrained call of a family's class fails the test: the guard must decide from config.json."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained was called")
    for cls, _, _ in family.FAMILIES.values():
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", refuse)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_a_text_only_checkpoint_is_refused_before_anything_is_built(tmp_path, model_type, no_loading):
    path = text_only_checkpoint(tmp_path, model_type)
    with pytest.raises(ValueError) as err:
        family.load_model(path)
    message = str(err.value)
    assert f"model_type {model_type!r} is a text-only checkpoint" in message and "\n" not in message
    assert "Qwen2.5-VL (qwen2_5_vl)" in message and "Qwen3-VL (qwen3_vl)" in message


@pytest.mark.parametrize("model_type", ["foo", "qwen2_vl", "qwen3_vl_moe"])
def test_an_unsupported_vision_family_is_refused_before_anything_is_built(tmp_path, model_type, no_loading):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "vision_config": {}}))
    with pytest.raises(ValueError, match=f"model_type {model_type!r} is not a family this project trains; supported: "
                                         r"Qwen2.5-VL \(qwen2_5_vl\), Qwen3-VL \(qwen3_vl\)$"):
        family.load_model(str(tmp_path))


@pytest.mark.parametrize("script, model_type", [("train.py", "qwen3"), ("eval.py", "qwen2")])
def test_the_scripts_refuse_a_text_only_checkpoint_in_one_line(tmp_path, script, model_type):
    path = text_only_checkpoint(tmp_path / "model", model_type)
    proc = subprocess.run([sys.executable, script, "--model", path, "--out_dir" if script == "train.py" else "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"{script}: error: --model {path}: model_type {model_type!r} is a text-only checkpoint (no vision_config): "
        "AT-RL needs a vision-language model; supported: Qwen2.5-VL (qwen2_5_vl), Qwen3-VL (qwen3_vl)"]
    assert not os.path.exists(tmp_path / "out")  # nothing written


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen3_vl_wide"])
def test_a_qwen3_folder_loaded_as_qwen25_is_refused_not_half_random(tiny_checkpoint, monkeypatch, kind):
    """What train.py and eval.py did before the family table (every checkpoint loaded as Qwen2.5-VL): transformers
    re-initialised the tensors it did not find and dropped those it did not know, and only warned."""
    path = tiny_checkpoint(kind)  # built first: the checkpoint is a true Qwen3-VL
    monkeypatch.setitem(family.FAMILIES, "qwen3_vl", family.FAMILIES["qwen2_5_vl"])
    with pytest.raises(ValueError) as err:
        family.load_model(path)
    message = str(err.value)
    # the q/k/v biases and the Qwen2.5-VL vision MLP are missing; the q/k norms and Qwen3-VL's vision MLP, merger and
    # DeepStack mergers are unexpected; with head_dim 64 the q/k/v/o projections of every layer have the wrong shape
    assert "29 missing keys" in message and "40 unexpected keys" in message and "\n" not in message
    assert ("16 mismatched keys" in message) == (kind == "qwen3_vl_wide")


def damaged(src, dst, how):
    """A copy of checkpoint src with its weights file damaged: a tensor deleted, renamed or reshaped, or the file cut."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    if how == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
        return str(dst)
    weights = load_file(path)
    name = "model.language_model.layers.1.self_attn.q_norm.weight"
    if how == "deleted":
        del weights[name]
    elif how == "renamed":
        weights[name.replace("q_norm", "query_norm")] = weights.pop(name)
    elif how == "reshaped":
        weights[name] = torch.ones(2 * len(weights[name]))
    save_file(weights, path, metadata={"format": "pt"})
    return str(dst)


@pytest.mark.parametrize("how, says", [("deleted", "1 missing keys"), ("renamed", "1 missing keys (e.g. model.language_"
                                                                          "model.layers.1.self_attn.q_norm.weight); 1 unexpected"),
                                       ("reshaped", "1 mismatched keys"), ("truncated", "cannot be loaded")])
def test_a_damaged_checkpoint_is_refused_in_one_line(tiny_checkpoint, tmp_path, how, says):
    path = damaged(tiny_checkpoint("qwen3_vl"), tmp_path / how, how)
    with pytest.raises(ValueError) as err:
        family.load_model(path)
    assert str(err.value).startswith(f"{path}: its weights") and says in str(err.value) and "\n" not in str(err.value)


def test_a_hub_style_qwen3_config_loads_clean(tiny_checkpoint, tmp_path):
    """Hub checkpoints written by transformers 4.57 say rope_scaling + rope_theta and vision model_type "qwen3_vl";
    transformers 5.x reads them into rope_parameters. The guard keys on the top-level model_type only."""
    path = tmp_path / "legacy"
    shutil.copytree(tiny_checkpoint("qwen3_vl_wide"), path)
    config = json.loads((path / "config.json").read_text())
    rope = config["text_config"].pop("rope_parameters")
    config["text_config"].update(rope_theta=rope["rope_theta"], rope_scaling={k: v for k, v in rope.items()
                                                                              if k != "rope_theta"})
    config["vision_config"]["model_type"] = "qwen3_vl"
    (path / "config.json").write_text(json.dumps(config))
    model = family.load_model(str(path))
    reference = family.load_model(tiny_checkpoint("qwen3_vl_wide"))
    assert model.config.text_config.rope_parameters == reference.config.text_config.rope_parameters
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_each_family_prompts_with_its_own_chat_template(tiny_checkpoint, tmp_path, kind):
    """The tiny checkpoints save their family's template; one saved without any gets its family's from
    load_processor, or the checkpoint's chat_template.json when it ships one -- never another family's."""
    system = tiny.SYSTEM_TURN[kind]  # (these two kinds are named by their model_type)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint(kind), bare)
    os.remove(bare / "chat_template.jinja")
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(bare)).chat_template is None  # the test's premise
    messages = rollout.build_messages("q")
    for path in (tiny_checkpoint(kind), str(bare)):
        tokenizer = family.load_processor(path)[0]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prompt == f"{system}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>q\n" \
                         f"{rollout.FORMAT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    (bare / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'shipped' }}"}))
    assert family.load_processor(str(bare))[0].chat_template == "{{ 'shipped' }}"
    tokenizer, image_processor = family.load_processor(tiny_checkpoint(kind))
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        rollout.encode_prompts(tokenizer, image_processor, [visualmath.make_slots(1, seed=0)[0]["image"]], ["q"])


def test_a_tokenizer_that_would_strip_the_format_tags_is_refused(tiny_checkpoint, tmp_path):
    """Qwen3 tokenizers add <think> / </think> as tokens: marked special, decoding with skip_special_tokens (as
    rollout.sample_groups does) would drop them and every response would fail the format reward, silently."""
    path = tmp_path / "special-think"
    shutil.copytree(tiny_checkpoint("qwen3_vl"), path)
    tokenizer = family.load_processor(str(path))[0]  # the tiny one keeps them as text: accepted
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    tokenizer.save_pretrained(path)
    with pytest.raises(ValueError, match=r"drops the answer format's tags as special tokens when decoding "
                                         r"\('<think>1</think><answer>1</answer>' -> '1<answer>1</answer>'\)"):
        family.load_processor(str(path))


def test_pixel_bounds_are_the_familys_merged_token():
    qwen25, qwen3 = tiny.make_image_processor("qwen2_5_vl"), tiny.make_image_processor("qwen3_vl")
    assert family.pixel_bounds(qwen25, 0, 0, 512) == (784, 401408)  # train.py's defaults before Qwen3-VL, exactly
    assert family.pixel_bounds(qwen3, 0, 0, 512) == (1024, 524288)
    assert family.pixel_bounds(qwen3, 0, 0) == (0, 0)  # eval.py: 0 = the image processor's own bounds
    assert family.pixel_bounds(qwen3, 2048, 4096, 512) == (2048, 4096)
    with pytest.raises(SystemExit, match=r"^train.py: error: --min_pixels 784 is below one vision token of this "
                                         r"checkpoint: use 0 \(the family's own\) or >= 1024 \(32 x 32 px"):
        family.pixel_bounds(qwen3, 784, 0, 512)
    with pytest.raises(SystemExit, match=r"^eval.py: error: --max_pixels 1000: use 0"):
        family.pixel_bounds(qwen3, 0, 1000, prog="eval.py")
    assert family.pixel_bounds(qwen25, 784, 0, 512) == (784, 401408)


def test_train_refuses_qwen25_pixel_bounds_for_a_qwen3_checkpoint(tiny_checkpoint, tmp_path):
    proc = run_train(tiny_checkpoint("qwen3_vl"), tmp_path, "--steps", "1", "--min_pixels", "784", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "train.py: error: --min_pixels 784 is below one vision token of this checkpoint: use 0 (the family's own) "
        "or >= 1024 (32 x 32 px"), proc.stderr[-2000:]


def test_a_qwen3_run_resumes_exactly_and_saves_a_qwen3_checkpoint(tiny_checkpoint, tmp_path):
    """Head_dim 64 != hidden / heads (Qwen3-VL-4B's geometry), default pixel bounds; 2 steps straight = 1 + resume 1."""
    warm = tiny_checkpoint("qwen3_vl_wide", warm=True)
    run_train(warm, tmp_path / "straight", "--steps", "2", "--save_every", "1")
    run_train(warm, tmp_path / "split", "--steps", "1", "--save_every", "1")
    run_train(warm, tmp_path / "split", "--steps", "2", "--save_every", "1", "--resume", "1")
    a, b = records(tmp_path / "straight"), records(tmp_path / "split")
    assert [r["step"] for r in b] == [0, 1] and a[0]["grad_norm"] > 0
    for ra, rb in zip(a, b):  # (not eval_*: the split run's first half evaluated at its own last step)
        for key in ("reward", "accuracy", "response_len", "loss", "grad_norm", "lr", "anchor_frac", "clusters"):
            assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    checkpoint = str(tmp_path / "split" / "checkpoint-2")
    assert json.loads(open(os.path.join(checkpoint, "config.json")).read())["model_type"] == "qwen3_vl"
    model = family.load_model(checkpoint)  # every weight matched (the tied LM head, the q/k norms, DeepStack)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration" and model.config.text_config.head_dim == 64
    straight = load_file(str(tmp_path / "straight" / "checkpoint-2" / "model.safetensors"))
    split = load_file(os.path.join(checkpoint, "model.safetensors"))
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)
    config = json.loads((tmp_path / "split" / "log.jsonl").read_text().splitlines()[0])["config"]
    assert (config["min_pixels"], config["max_pixels"]) == (1024, 512 * 1024)  # the family's defaults, logged


def test_eval_cli_grades_a_qwen3_checkpoint_as_the_evaluator_does(tiny_checkpoint, tmp_path):
    import eval as ev
    warm = tiny_checkpoint("qwen3_vl_wide", warm=True)
    out = tmp_path / "results.json"
    args = ["--benchmark", "visualmath-v1", "--limit", "6", "--k", "2", "--temperature", "1.0", "--max_new_tokens", "12"]
    proc = subprocess.run([sys.executable, "eval.py", "--model", warm, *args, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    got = json.loads(out.read_text())["results"]["visualmath-v1"]
    model, tokenizer, image_processor = ev.load_model(warm, torch.device("cpu"))
    import engine
    respond = ev.model_responder(model, tokenizer, image_processor, 12, engine=engine.DecodeEngine(model))
    cfg = ev.parse_config(["--model", warm, *args])  # the CLI's defaults (batch size, seeds)
    rows = visualmath.make("visualmath-v1", 6, seed=cfg.visualmath_seed)
    expected = ev.evaluate(rows, respond, k=2, temperature=1.0, batch_size=cfg.batch_size, seed=cfg.seed,
                           show=cfg.show)
    for key in ("n", "accuracy", "format", "avg@2", "pass@2", "format@2"):
        assert got[key] == expected[key], key
    assert [ex["greedy"]["response"] for ex in got["examples"]] == [ex["greedy"]["response"] for ex in expected["examples"]]
    assert got["format@2"] > 0  # some samples are well-formed answers: what is graded is not noise alone
