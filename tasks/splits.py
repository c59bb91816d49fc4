"""Which rows train and which evaluate: the data train.py and eval.py read, each announced in one line.

    training_data(dataset, split, eval_dataset, eval_split, ...) -> (train, eval, test rows or None, lines)
    evaluation_data(name, split, limit, ...)                      -> (rows, line)

The rules, as peers use their data (EasyR1 examples/qwen2_5_vl_3b_geo3k_grpo.sh: hiyouga/geometry3k@train for
training, @test for validation; verl examples/data_preprocess/geo3k.py likewise):
  1. A real dataset trains on its `train` split unless --split names another; an evaluation-only benchmark
     (MathVista, MathVerse, ...) refuses to be trained on without an explicit split.
  2. Evaluation reads the benchmark's evaluation split (test / testmini; tasks/suite.py). With no --eval_dataset,
     train.py evaluates on the training benchmark's own evaluation split when it has one (Geometry3K: test,
     MMK12: test) and not at all when it has none (ViRL39K).
  3. Training and evaluating on the same rows (one file, or one hub split, read by both) is refused in one line,
     unless --allow_same_rows 1 says it is meant.
  4. The synthetic task is unchanged: training rows come from --seed, held-out rows from the disjoint seed + 10000
     (and train.py's --test_size rows, never used to choose anything, from seed + 20000).
Each load prints `data: <source> split=<name> rows=<n>` (tasks/benchmarks.data_line), skipped rows counted.
Run: `python -m pytest -q tests/test_loaders.py -k split`.
"""

from tasks import benchmarks, suite, visualmath


def _synthetic_line(name, seed, n, role):
    return f"data: {name} split=seed{seed} rows={n} ({role})"


def training_data(dataset, split="", eval_dataset="", eval_split="", train_size=2048, eval_size=256, seed=0,
                  show_choices=False, allow_same_rows=False, test_size=0):
    """(train rows, eval rows or None, test rows or None, the data lines to print) for train.py; a ValueError says
    what is wrong. dataset / eval_dataset: a synthetic task name (visualmath.TASKS), a local folder or file, or a hub
    id ("" eval_dataset: rule 2). split / eval_split: "" = the role's default (rules 1-2). eval_size 0: no evaluation.
    test_size: rows of the synthetic task's second held-out set (0: none).
    """
    test = None
    if test_size:
        test = visualmath.make(dataset, test_size, seed=seed + 20_000)
    train, held_out, lines = _train_and_eval(dataset, split, eval_dataset, eval_split, train_size, eval_size, seed,
                                             show_choices, allow_same_rows)
    if test is not None:
        lines.append(_synthetic_line(dataset, seed + 20_000, test_size, "test, never used to choose"))
    return train, held_out, test, lines


def _train_and_eval(dataset, split, eval_dataset, eval_split, train_size, eval_size, seed, show_choices,
                    allow_same_rows):
    lines = []
    if dataset in visualmath.TASKS:
        train = visualmath.make(dataset, train_size, seed=seed)
        lines.append(_synthetic_line(dataset, seed, len(train), "training"))
        train_info = None
    else:
        train, train_info = benchmarks.load_split(dataset, split or None, "train", show_choices=show_choices)
        lines.append(benchmarks.data_line(train_info, "training"))
    if not eval_size:
        return train, None, lines + ["data: no evaluation (--eval_size 0)"]
    if eval_dataset in visualmath.TASKS or (not eval_dataset and dataset in visualmath.TASKS):
        name = eval_dataset or dataset
        held_out = visualmath.make(name, eval_size, seed=seed + 10_000)  # a disjoint seed: rule 4
        return train, held_out, lines + [_synthetic_line(name, seed + 10_000, eval_size, "evaluation, held out")]
    if not eval_dataset:  # rule 2: the training benchmark's own evaluation split, if it has one
        bench = suite.benchmark(train_info["schema"])
        if bench is None or not bench.eval_split or train_info["kind"] == "file":
            return train, None, lines + [f"data: no evaluation ({dataset} has no evaluation split we know; "
                                         f"pass --eval_dataset)"]
        eval_dataset = dataset.rsplit("@", 1)[0] if "@" in dataset else dataset
    held_out, eval_info = benchmarks.load_split(eval_dataset, eval_split or None, "eval", limit=eval_size,
                                                show_choices=show_choices)
    overlap = benchmarks.same_rows(train_info, eval_info) if train_info else ""
    if overlap and not allow_same_rows:  # rule 3
        raise ValueError(f"training and evaluation read the same rows ({overlap}); evaluate on another split "
                         f"(--eval_split) or pass --allow_same_rows 1 if that is meant")
    return train, held_out, lines + [benchmarks.data_line(eval_info, "evaluation" + (", SAME ROWS AS TRAINING"
                                                                                      if overlap else ""))]


def evaluation_data(name, split="", limit=0, visualmath_seed=10_000, config="", show_choices=False, schema=""):
    """(rows, data line) of one benchmark for eval.py: a synthetic held-out split or benchmarks.load_split (role eval)."""
    if name in visualmath.TASKS:
        rows = visualmath.make(name, limit or 500, seed=visualmath_seed)
        return rows, _synthetic_line(name, visualmath_seed, len(rows), "evaluation")
    rows, info = benchmarks.load_split(name, split or None, "eval", schema=schema or None, limit=limit or None,
                                       config=config or None, show_choices=show_choices)
    return rows, benchmarks.data_line(info, "evaluation")
