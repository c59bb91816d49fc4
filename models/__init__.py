"""models/ -- which checkpoints the project loads, and the tiny one it builds itself.

    tiny.py   the embedded default model: a real Qwen2.5-VL class at 1M parameters with a BPE tokenizer trained
              here, built offline and warm-started by SFT on VisualMath, so that `python train.py` runs on a
              CPU in minutes with no download (`python models/tiny.py --help`)
"""
