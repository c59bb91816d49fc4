"""experiment.py's tables from logs alone (--skip_training): the paired differences, their 95% t-intervals and the
lucky-guess shares are recomputed here by hand from synthetic logs. No model is built or trained."""
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_log(path, finals, lucky):
    """A train.py log of 4 steps with evaluations before RL and after steps 2 and 4."""
    os.makedirs(path, exist_ok=True)
    recs = [{"config": {}, "world": 1}, {"step": -1, "eval_accuracy": 0.25, "eval_avg@4": 0.3}]
    for step in range(4):
        rec = {"step": step, "reward": 0.5, "lucky": lucky, "clusters": 3.5 if lucky else 0.0}
        if step in (1, 3):
            g, a = finals if step == 3 else (0.5, 0.4)
            rec.update({"eval_accuracy": g, "eval_avg@4": a, "eval_lucky@4": lucky})
        recs.append(rec)
    with open(os.path.join(path, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


def test_tables_from_logs(tmp_path):
    finals = {("uniform", 0, 0): (0.90, 0.80), ("uniform", 0, 1): (0.80, 0.70), ("uniform", 1, 0): (0.85, 0.60),
              ("uniform", 1, 1): (0.95, 0.90), ("atrl", 0, 0): (0.95, 0.85), ("atrl", 0, 1): (0.80, 0.75),
              ("atrl", 1, 0): (0.90, 0.70), ("atrl", 1, 1): (0.90, 0.80)}
    for (arm, w, r), f in finals.items():
        write_log(tmp_path / "runs" / f"{arm}-w{w}-r{r}", f, lucky=0.1 if arm == "atrl" else 0.0)
    proc = subprocess.run([sys.executable, "experiment.py", "--skip_training", "--out", str(tmp_path), "--arms",
                           "uniform", "atrl", "--warm_seeds", "0", "1", "--steps", "4", "--eval_every", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = json.loads((tmp_path / "arms.json").read_text())
    cells = [(w, r) for w in (0, 1) for r in (0, 1)]
    diffs = [finals["atrl", w, r][0] - finals["uniform", w, r][0] for w, r in cells]
    assert arms["atrl"]["greedy"]["vs_uniform"] == diffs
    assert arms["atrl"]["greedy"]["start"] == 0.25 and arms["uniform"]["avg@4"]["final"] == [0.8, 0.7, 0.6, 0.9]
    # the curve: the mean of the evaluations after RL began (steps 2 and 4)
    assert arms["atrl"]["avg@4"]["area"][0] == statistics.mean([0.4, 0.85])
    assert arms["atrl"]["lucky_train"] == 0.1 and arms["uniform"]["lucky_train"] == 0.0
    assert arms["atrl"]["clusters"] == 3.5
    # summary: mean and 95% t-interval (3 degrees of freedom: t = 3.18) of the 4 paired differences
    mean, half = statistics.mean(diffs), 3.18 * statistics.stdev(diffs) / 2
    summary = (tmp_path / "summary.md").read_text()
    assert f"| atrl | 0.250 | {statistics.mean(f[0] for k, f in finals.items() if k[0] == 'atrl'):.3f} ± " in summary
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | 2/4" in summary, summary
    assert (tmp_path / "curves.png").exists()
