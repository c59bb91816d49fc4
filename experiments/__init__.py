"""experiments/ -- questions answered by measurement, with their results.

Each script here trains and evaluates through the project's own commands (train.py, eval.py, models/tiny.py),
fixes its design in code before any run, pairs its arms by (warm start, RL seed), and writes its tables next to
the logs they come from in experiments/results/<name>/, so `--skip_training` rebuilds every table on a clean
checkout:

    v2.py        the paper's claims at CPU scale on VisualMath v2 (every --weighting arm, bimodality, anchor
                 precision)                                               -> results/v2/summary.md
    v3.py        where credit is diluted: VisualMath v3 in gates (gradient-noise census, oracle arms)
                                                                          -> results/v3/summary.md
    report.py    the connectivity report of one checkpoint (tokens by image density, anchors, clusters,
                 precision against the perception tokens) and the measuring helpers v2.py uses
    dilution.py  gate 0's measurement: uniform's gradient split by token class, signal and noise
    trials.py    what the scripts share: the grid of runs (finished ones skipped), paired t-intervals, Holm

results/v1/ holds the first build's experiment (VisualMath v1), whose script has since become v2.py.
Run from the repository root: `python experiments/v2.py --help`.
"""
