"""infra/ -- the machinery around a run, which a reader of the method can skip.

    cli.py          the command line: flags and --help from a config dataclass's comments, one-line errors
    runs.py         the run: torchrun ranks, the out_dir guard and lock, the log, stop signals, trackers
    checkpoints.py  what is inside a checkpoint: kill-9-safe saves, manifests, fallback, RNG states

Their rules (why a run survives kill -9, a full disk, SIGTERM and a corrupt checkpoint) are in the docstrings
of runs.py and checkpoints.py; docs/runs.md explains them for users.
"""
