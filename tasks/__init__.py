"""tasks/ -- what the model is asked, and how its answers become rewards.

Every task reaches the RL loop in one schema (a row: image, question, answer, choices, perception values), so
train.py and eval.py never see a dataset's own layout:

    visualmath.py   the synthetic task (default): digits drawn on a grid, arithmetic over them, and the
                    ground-truth perception values that let us measure anchor precision (v1, v2, v3)
    chains.py       VisualMath v3's teacher: a real chain's shape (filler, descriptions, copies) and every
                    token's class
    benchmarks.py   real benchmarks from hub ids or local copies -> the unified schema; the data line
    layouts.py      which files of a local copy are a split, read as the hub reads them (cards, shards, stems)
    suite.py        the paper's benchmarks: their splits, and one row conversion each
    splits.py       which rows train and which evaluate (train on train, never on the evaluation rows)
    grading.py      a response -> a verifiable reward: answer extraction, matching by value or option,
                    the format bonus
    scorers.py      each benchmark's own scoring rule, for the `official` accuracy beside ours
Splits, layouts, the suite and grading for users: docs/benchmarks.md.
"""
