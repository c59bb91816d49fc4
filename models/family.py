"""models/family.py -- which model family a checkpoint is, and how the project loads it.

A checkpoint names its family in config.json's `model_type`. transformers loads a checkpoint of one family into
another family's class whenever the shapes allow it, initialising at random what it does not find and dropping
what it does not know, with nothing but a warning: a Qwen3-VL folder loaded as Qwen2.5-VL trains half a random
model and exits 0 (measured on models/tiny.py's Qwen3-VL: 29 tensors re-initialised, 40 dropped). So every load here reads
the family first -- from config.json alone, before anything is built: a text-only checkpoint handed to a VL class
would first build a default-sized (3-12 B parameter) model --, refuses one the project does not support, and
treats any weight the load did not match (missing, unexpected or of another shape in transformers' loading report)
and a weights file it cannot read as an error.

    FAMILIES                    model_type -> (transformers class, name, chat template): one table, read top down
    family(path)                the checkpoint's model_type, refused in one line unless it is in FAMILIES
    load_model(path, dtype)     the model with sdpa attention (the probe wraps it), every weight matched
    load_processor(path)        (tokenizer, image processor): left padding, the PIL image processor, and a chat
                                template always (the checkpoint's, else its family's: never another family's);
                                refused if decoding would drop the answer format's <think>/<answer> tags
    pixel_bounds(ip, lo, hi)    --min_pixels / --max_pixels against the family's merged token (factor^2 px), 0 resolved
    checkpoint_activations(m)   gradient checkpointing under either of transformers' names for it

What differs between the two families, and where the project handles it (docs/families.md has the whole list):
  1. Attention: Qwen3-VL normalises q and k per head (RMSNorm over head_dim, before RoPE), has no q/k/v bias and
     states head_dim (4B: 128, while hidden / heads = 80) -- engine.py's decode step (the training forward is
     transformers' own).
  2. Vision: 16-px patches (Qwen2.5-VL: 14), so one merged LLM token is 32 x 32 px (28 x 28): pixel_bounds and
     rollout.encode_prompts read patch_size x merge_size from the image processor, never a literal.
  3. Chat template: Qwen2.5-VL's opens with a default system turn ("You are a helpful assistant."); Qwen3-VL's has
     none. The tiny checkpoints (models/tiny.py) save their family's template; a checkpoint without one gets its
     family's here.
  4. DeepStack (Qwen3-VL): vision features added to the first decoder layers' hidden states at image positions,
     inside the model's own forward -- nothing to do for us (the decode engine's prefill runs that forward).
Same in both: the module tree (model.model.visual, model.model.language_model.layers, model.lm_head), the vision
special tokens' strings, the image processor class, mRoPE positions of a response token (engine.rope_base).

Errors are ValueError (a family we do not support, a weight that did not match) or OSError (a path or hub id
that cannot be read), each with one line that names the value and what to do; train.py and eval.py print it
(pixel_bounds stops the program itself, in the same one-line form).

Run the tests: `OMP_NUM_THREADS=1 python -m pytest -q tests/test_family.py`.
"""
import json
import os

import torch

from infra import cli

# The two families' chat templates, reduced to what we use (text and images in user turns; the official ones also
# render tools and videos). One turn is written alike in both; Qwen2.5-VL's opens with a default system turn when
# the conversation has none, Qwen3-VL-Instruct's has NO default system turn (checked against the hub's
# chat_template.json, tool branches dropped: both render the same text for rollout.build_messages' one user turn).
_TURN = ("<|im_start|>{{ message['role'] }}\n"
         "{% if message['content'] is string %}{{ message['content'] }}"
         "{% else %}{% for part in message['content'] %}"
         "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
         "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
         "{% endfor %}{% endif %}"
         "<|im_end|>\n")
_DEFAULT_SYSTEM = ("{% if loop.first and message['role'] != 'system' %}"
                   "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                   "{% endif %}")
_GENERATION = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
QWEN25_CHAT_TEMPLATE = "{% for message in messages %}" + _DEFAULT_SYSTEM + _TURN + "{% endfor %}" + _GENERATION
QWEN3_CHAT_TEMPLATE = "{% for message in messages %}" + _TURN + "{% endfor %}" + _GENERATION

# model_type (config.json, top level) -> (transformers class, name in messages, the family's chat template).
# NOTE: only the top-level model_type is read: the sub-configs' types differ between transformers versions
# (5.4 writes vision_config.model_type "qwen3_vl", 5.25 "qwen3_vl_vision").
FAMILIES = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL", QWEN25_CHAT_TEMPLATE),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3-VL", QWEN3_CHAT_TEMPLATE),  # the dense 2B/4B/8B
}


def family(path):
    """model_type of the checkpoint at `path` (a folder or a hub id), checked against FAMILIES. Reads config.json
    only (for a hub id, fetches only that file): nothing is built, so a refused checkpoint costs nothing."""
    from transformers import PretrainedConfig

    if os.path.isfile(os.path.join(path, "config.json")):  # a folder: read it ourselves (no remote code, no network)
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    else:
        try:  # the raw dict: a model_type transformers does not know is still read (AutoConfig would raise)
            config = PretrainedConfig.get_config_dict(path)[0]
        except OSError as err:  # a hub id that does not exist or cannot be reached
            raise OSError(f"{path}: cannot load it ({str(err).splitlines()[0][:200]}); check the name, the network, "
                          "or pass a local checkpoint dir") from None
    model_type = config.get("model_type", "")
    if model_type not in FAMILIES:
        supported = ", ".join(f"{name} ({t})" for t, (_, name, _) in FAMILIES.items())
        what = "a text-only checkpoint (no vision_config): AT-RL needs a vision-language model" \
            if "vision_config" not in config else "not a family this project trains"
        raise ValueError(f"{path}: model_type {model_type!r} is {what}; supported: {supported}")
    return model_type


def load_model(path, dtype=torch.float32, attn_implementation="sdpa"):
    """The checkpoint at `path` in its family's class; every weight of the checkpoint and of the class matched."""
    import transformers
    from safetensors import SafetensorError
    from transformers.utils import logging

    cls = getattr(transformers, FAMILIES[family(path)][0])
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # transformers' own LOAD REPORT table: the one line below says what matters
    try:
        # ignore_mismatched_sizes: a tensor of the wrong shape is then reported in `info` (with its shapes) instead of
        # raised as "see the report above" -- and refused below all the same
        model, info = cls.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                          ignore_mismatched_sizes=True, output_loading_info=True)
    except (RuntimeError, SafetensorError) as err:  # a weights file that cannot be read (truncated, corrupt)
        first = " ".join(line.strip() for line in str(err).splitlines()[:2] if line.strip()) or type(err).__name__
        raise ValueError(f"{path}: its weights cannot be loaded into {cls.__name__}: {first[:300]}; is the checkpoint "
                         "complete and of the family its config.json names?") from None
    finally:
        logging.set_verbosity(verbosity)
    # NOTE: from_pretrained only warns about these; a model trained with random or dropped weights is worse
    # than no model, so any of them stops the load. (A tied LM head absent from the file is not missing: the
    # tie fills it, and the report is empty.)
    unmatched = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys",
                                                                  "mismatched_keys", "error_msgs")}
    if any(unmatched.values()):
        detail = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {v[0][:200]})" for k, v in unmatched.items() if v)
        raise ValueError(f"{path}: its weights do not match {cls.__name__}: {detail}; is the checkpoint complete "
                         "and of the family its config.json names?")
    return model


def load_processor(path):
    """(tokenizer, image_processor) of a checkpoint dir or hub name; the image processor is the PIL one.

    The tokenizer always has a chat template: its own, else the checkpoint's processor-level file
    (chat_template.json / chat_template.jinja, which AutoTokenizer does not read), else its family's -- never a
    template of another family (Qwen2.5-VL's system turn in a Qwen3-VL prompt is a prompt it never saw).
    NOTE: tokenizers are left-padded here once and for all (generation appends on the right).
    """
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.utils import cached_file

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # Qwen uses <|endoftext|> as pad
        tokenizer.pad_token = "<|endoftext|>"
    if tokenizer.chat_template is None:
        for name in ("chat_template.json", "chat_template.jinja"):
            found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
            if found:
                with open(found) as f:
                    tokenizer.chat_template = json.load(f)["chat_template"] if name.endswith(".json") else f.read()
                break
        else:
            tokenizer.chat_template = FAMILIES[family(path)][2]
    # NOTE: responses are decoded with skip_special_tokens (rollout.sample_groups); a tokenizer that marks the answer
    # format's tags special (Qwen3 tokenizers add <think> and </think> as tokens) would strip them, and the format
    # reward (tasks/grading.format_ok) would silently be 0 for every response. Checked here, by decoding them.
    tags = "<think>1</think><answer>1</answer>"
    decoded = tokenizer.decode(tokenizer(tags, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    if decoded != tags:
        raise ValueError(f"{path}: its tokenizer drops the answer format's tags as special tokens when decoding "
                         f"({tags!r} -> {decoded!r}): the format reward would never see them")
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return tokenizer, image_processor


def pixel_bounds(image_processor, min_pixels, max_pixels, default_tokens=None, prog="train.py"):
    """(min_pixels, max_pixels) checked against one merged vision token of this checkpoint: factor^2 px, factor =
    patch_size x merge_size (Qwen2.5-VL 14 x 2 = 28, Qwen3-VL 16 x 2 = 32).

    0 stays 0 (= the image processor's own bounds, rollout.encode_prompts), unless default_tokens is given: then
    0 becomes factor^2 (min) and default_tokens x factor^2 (max) -- train.py's defaults, 784 and 401,408 px for
    Qwen2.5-VL at 512 tokens, as they always were. A nonzero bound below one token stops `prog` with one line
    naming it (infra/cli.config_error), as every other bad flag does.

    >>> class Ip: patch_size, merge_size = 16, 2
    >>> pixel_bounds(Ip, 0, 0, default_tokens=512)
    (1024, 524288)
    """
    factor = image_processor.patch_size * image_processor.merge_size
    if default_tokens:
        min_pixels = min_pixels or factor * factor
        max_pixels = max_pixels or default_tokens * factor * factor
    token = f"{factor * factor} ({factor} x {factor} px: one merged vision token, patch {image_processor.patch_size} " \
            f"x merge {image_processor.merge_size})"
    if min_pixels and min_pixels < factor * factor:
        cli.config_error(prog, f"--min_pixels {min_pixels} is below one vision token of this checkpoint: use 0 (the "
                               f"family's own) or >= {token}")
    if max_pixels and max_pixels < max(min_pixels, factor * factor):
        cli.config_error(prog, f"--max_pixels {max_pixels}: use 0 (the family's own) or a value >= --min_pixels "
                               f"{min_pixels} and >= {token}")
    return min_pixels, max_pixels


def checkpoint_activations(model):
    """Recompute each decoder layer's activations in the backward (memory for time), non-reentrant.

    transformers >= 5.23 names it activation_checkpointing_enable; older 5.x gradient_checkpointing_enable."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
