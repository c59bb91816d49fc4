"""tasks/ -- what the model is asked, and how its answers become rewards.

Every task reaches the RL loop in one schema (a row: image, question, answer, choices, perception values), so
train.py and eval.py never see a dataset's own layout:

    visualmath.py   the synthetic task (default): digits drawn on a grid, arithmetic over them, and the
                    ground-truth perception values that let us measure anchor precision (v1, v2, v3)
    chains.py       VisualMath v3's teacher: a real chain's shape (filler, descriptions, copies) and every
                    token's class
    benchmarks.py   the real benchmarks (Geometry3K, MathVista, MathVerse, ViRL39K) from hub ids or local copies
                    in their releases' layouts
    grading.py      a response -> a verifiable reward: answer extraction, matching by value or option,
                    the format bonus
"""
