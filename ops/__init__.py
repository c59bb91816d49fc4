"""ops/ -- tensor arithmetic below the method's files, which a reader of the method can skip at first.

    attention_rows.py   the probe's reads: softmax probabilities of some attention rows at some keys, from the
                        attention kernel's own log-sum-exp (and which kernel ran) or through whole rows
    sdpa.py             which kernel torch's scaled_dot_product_attention runs: the process-wide cuDNN choice
                        (off below cuDNN 9.26: its backward NaN), a prediction for given tensors, a record of what ran
    vision_windows.py   Qwen2.5-VL's windowed vision attention in one call per block instead of one per window (opt-in)

Files here import torch and nothing of the project; connectivity.py (the concept) calls them.
"""
