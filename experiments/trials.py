"""experiments/trials.py -- what experiments/v2.py and experiments/v3.py share: a grid of train.py runs, and paired statistics.

A comparison of RL arms is a grid of runs (arm x warm start x RL seed). A warm start and an RL seed fix the
starting model, the prompts and their order, and the held-out questions with their sampling keys, so two arms
run on the same (warm start, RL seed) form a *pair*, and their difference is the sharp comparison:

    d_j = metric(arm, pair j) - metric(baseline, pair j),   j = 1..n
    mean d +- t_{n-1, 1-alpha/2} * sd(d) / sqrt(n)          Student-t interval over the n pairs
    p = P(|T_{n-1}| >= |mean d| / (sd(d) / sqrt(n)))        two-sided paired t-test

Several contrasts tested at once get Holm's step-down correction of their p-values (Holm 1979: the i-th
smallest p is multiplied by m - i + 1, then made monotone) and Bonferroni intervals (alpha / m each), so the
chance of any false claim among the m stays below alpha.

Runs are started `jobs` at a time, one thread each, and a run whose log already holds its last step's
evaluation is skipped: an experiment interrupted after an hour continues where it stopped (a half-finished run
is started again from scratch with --overwrite 1; train.py's --resume would continue it, but only from a
checkpoint, and this keeps the one rule simple).

Student's t distribution is computed here (no scipy): the CDF by Simpson's rule on the density, the quantile
by bisection; both agree with tables to 4 decimals. Run: `python -m pytest -q tests/test_experiment.py`.
"""
import math
import os
import statistics
import subprocess
import time

from infra import runs

# Student t, two-sided 95%, by degrees of freedom (experiments/v2.py's v2 tables were computed with this table)
T_95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 11: 2.20,
        12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 20: 2.09, 30: 2.04}


def t_cdf(x, df):
    """P(T <= x) for Student's t with df degrees of freedom (Simpson's rule on the density from 0 to |x|).

    >>> round(t_cdf(2.5706, 5), 4), round(t_cdf(0.0, 3), 4)
    (0.975, 0.5)
    """
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    n, a = 2000, abs(x)
    h = a / n
    density = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
    area = h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))
    return 0.5 + math.copysign(area, x)


def t_quantile(p, df):
    """The x with t_cdf(x, df) = p (bisection).

    >>> round(t_quantile(0.975, 5), 3), round(t_quantile(1 - 0.05 / 6, 11), 3)   # 95%; Bonferroni over 3, n = 12
    (2.571, 2.82)
    """
    lo, hi = -1e3, 1e3
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def interval(values, alpha=0.05):
    """(mean, half-width of the two-sided 1 - alpha t-interval) of a list of values; at alpha 0.05 the T_95 table
    (the nearest smaller df where it has none), else the exact quantile.

    >>> [round(x, 4) for x in interval([0.01, 0.03, 0.02, 0.04])]
    [0.025, 0.0205]
    """
    if len(values) < 2:
        return (values[0] if values else float("nan")), float("nan")
    df = len(values) - 1
    t = (T_95.get(df) or T_95[max(k for k in T_95 if k <= df)]) if alpha == 0.05 else t_quantile(1 - alpha / 2, df)
    return statistics.mean(values), t * statistics.stdev(values) / len(values) ** 0.5


def paired_p(diffs):
    """Two-sided paired t-test p-value of mean(diffs) = 0 (1.0 for fewer than 2 pairs or no spread and mean 0)."""
    if len(diffs) < 2:
        return 1.0
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if statistics.mean(diffs) == 0 else 0.0
    t = abs(statistics.mean(diffs)) / (sd / len(diffs) ** 0.5)
    return 2 * (1 - t_cdf(t, len(diffs) - 1))


def holm(pvalues):
    """Holm-adjusted p-values, in the input's order.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def evals(records, key):
    """[(updates done, value)] of one run's evaluations (the one before RL is at 0)."""
    return [(r["step"] + 1, r[key]) for r in records if key in r]


def curve_mean(records, key):
    """Mean of a run's evaluations after RL began (the area under its curve: who learns faster), or None."""
    after = [v for s, v in evals(records, key) if s > 0]
    return statistics.mean(after) if after else None


def finished(out_dir, steps):
    """Did the run in out_dir log its last step with an evaluation? (experiments skip such runs)"""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        return False
    return any(r.get("step") == steps - 1 and "eval_accuracy" in r for r in runs.read_log(path)[1:])


def run_all(commands, jobs=2):
    """Run (name, argv, log path) jobs, `jobs` at a time, one thread each, each at low priority (nice 15, so
    the machine's other work goes first); returns when all have exited, with {name: exit code}."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    pending, running, t0, codes = list(commands), [], time.time(), {}
    while pending or running:
        while pending and len(running) < jobs:
            name, argv, log = pending.pop(0)
            os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
            running.append((name, subprocess.Popen(["nice", "-n", "15", *argv], env=env, stdout=open(log, "w"),
                                                   stderr=subprocess.STDOUT)))
        time.sleep(2)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                codes[name] = proc.returncode
                print(f"[{time.time() - t0:6.0f}s] {name}: exit {proc.returncode} ({len(pending)} waiting)", flush=True)
    return codes
