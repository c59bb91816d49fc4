"""models/family.py -- which model family a checkpoint is, and how the project loads it.

A checkpoint names its family in config.json's `model_type`. transformers loads a checkpoint of one family into
another family's class whenever the shapes allow it, initialising at random what it does not find and dropping
what it does not know, with nothing but a warning: a Qwen3-VL folder loaded as Qwen2.5-VL trains half a random
model and exits 0. So every load here reads the family first, refuses one the project does not support, and
treats any weight the load did not match (transformers' loading info) as an error.

    FAMILIES                    model_type -> the transformers class that loads it (one table, read top down)
    family(path)                the checkpoint's model_type, refused in one line unless it is in FAMILIES
    load_model(path, dtype)     the model with sdpa attention (the probe wraps it), every weight matched
    load_processor(path)        (tokenizer, image processor): left padding, the PIL image processor
    checkpoint_activations(m)   gradient checkpointing under either of transformers' names for it

Errors are ValueError (a family we do not support, a weight that did not match) or OSError (a path or hub id
that cannot be read), each with one line that names the value and what to do; train.py and eval.py print it.

Run the tests: `python -m pytest -q tests/test_train.py -k family`.
"""
import json
import os

import torch

# model_type (config.json) -> (transformers class, what to call it in messages)
FAMILIES = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL"),
}


def family(path):
    """model_type of the checkpoint at `path` (a folder or a hub id), checked against FAMILIES."""
    from transformers import AutoConfig

    if os.path.isfile(os.path.join(path, "config.json")):  # a folder: read it ourselves (no remote code, no network)
        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type", "")
    else:
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
        except OSError as err:  # a hub id that does not exist or cannot be reached
            raise OSError(f"{path}: cannot load it ({str(err).splitlines()[0][:200]}); check the name, the network, "
                          "or pass a local checkpoint dir") from None
    if model_type not in FAMILIES:
        supported = ", ".join(f"{name} ({t})" for t, (_, name) in FAMILIES.items())
        raise ValueError(f"{path}: model_type {model_type!r} is not a family this project trains; supported: "
                         f"{supported}")
    return model_type


def load_model(path, dtype=torch.float32, attn_implementation="sdpa"):
    """The checkpoint at `path` in its family's class; every weight of the checkpoint and of the class matched."""
    import transformers

    model_type = family(path)
    cls = getattr(transformers, FAMILIES[model_type][0])
    model, info = cls.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                      output_loading_info=True)
    # NOTE: from_pretrained only warns about these; a model trained with random or dropped weights is worse
    # than no model, so any of them stops the load
    unmatched = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(unmatched.values()):
        detail = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {v[0]})" for k, v in unmatched.items() if v)
        raise ValueError(f"{path}: its weights do not match {cls.__name__}: {detail}; is the checkpoint complete "
                         "and of the family its config.json names?")
    return model


def load_processor(path):
    """(tokenizer, image_processor) of a checkpoint dir or hub name; the image processor is the PIL one.

    NOTE: tokenizers are left-padded here once and for all (generation appends on the right).
    """
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # Qwen uses <|endoftext|> as pad
        tokenizer.pad_token = "<|endoftext|>"
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return tokenizer, image_processor


def checkpoint_activations(model):
    """Recompute each decoder layer's activations in the backward (memory for time), non-reentrant.

    transformers >= 5.23 names it activation_checkpointing_enable; older 5.x gradient_checkpointing_enable."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
