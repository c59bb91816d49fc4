"""models/ -- which checkpoints the project loads, and the tiny ones it builds itself.

    family.py   the model families the project trains (Qwen2.5-VL, Qwen3-VL): one table from a checkpoint's
                model_type to its class and chat template; the guard that refuses any other family, and any
                load that would leave a weight random or unused, in one line; the family's pixel bounds
    tiny.py     the embedded default model: a real Qwen2.5-VL class at 1M parameters with a BPE tokenizer trained
                here, built offline and warm-started by SFT on VisualMath, so that `python train.py` runs on a
                CPU in minutes with no download (`python models/tiny.py --help`); --family qwen3_vl builds a tiny
                Qwen3-VL for the tests
"""
