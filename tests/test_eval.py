"""eval.py: benchmark accuracy (greedy, avg@k, pass@k), the connectivity report, training curves.

Accuracy is checked against hand-computed numbers: fixture files in the MathVista (testmini.json {pid: row}),
Geometry3K (parquet, image bytes) and MathVerse (jsonl, choices inside the question) layouts are written here,
and canned responses are injected through eval.evaluate_rows' `respond` hook, so each expected accuracy can be
worked out by reading the test. The real generation path runs too (a tiny warm-started checkpoint): in process
and as a 2-process torchrun (gloo), which must give the same numbers (rank striding + all-reduced counts).
The report test opens report.html and checks every PNG it references exists and is a real picture.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_eval.py
"""
import json
import os
import re
import subprocess
import sys

import PIL.Image
import pyarrow
import pyarrow.parquet
import pytest
import torch

import eval as ev
from experiments import report
from models import family
from tasks import benchmarks, visualmath
import bench_fixtures
from conftest import REPO, png_bytes, rounding, torchrun_command

PNG = png_bytes("RGB", (56, 28), (200, 220, 255))  # 4 x 2 patches of 14 px = 2 image tokens after merging


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    """One small file per benchmark layout; returns {schema: path}."""
    root = tmp_path_factory.mktemp("bench")
    (root / "images").mkdir()
    for name in ("1", "2", "3", "4"):
        (root / "images" / f"{name}.png").write_bytes(PNG)
    mathvista = {
        "1": {"pid": "1", "question": "What is the length of the bar?", "image": "images/1.png", "choices": None,
              "unit": "cm", "precision": 1.0, "answer": "1.2", "question_type": "free_form", "answer_type": "float"},
        "2": {"pid": "2", "question": "How many dots?", "image": "images/2.png", "choices": None, "unit": "",
              "precision": None, "answer": "4", "question_type": "free_form", "answer_type": "integer"},
        "3": {"pid": "3", "question": "The slope at x=2 is ____ that at x=5", "image": "images/3.png",
              "choices": ["larger than", "equal to", "smaller than"], "unit": None, "precision": None,
              "answer": "equal to", "question_type": "multi_choice", "answer_type": "text"},
        "4": {"pid": "4", "question": "Which count is shown?", "image": "images/4.png", "choices": ["2", "3", "5", "8"],
              "unit": None, "precision": None, "answer": "5", "question_type": "multi_choice", "answer_type": "text"},
    }
    (root / "testmini.json").write_text(json.dumps(mathvista), encoding="utf-8")
    geometry = [
        {"images": [{"bytes": PNG, "path": None}], "problem": "<image>Find x.", "answer": "3\\sqrt{3}",
         "id": "g1", "choices": ["3", "3\\sqrt{3}", "6", "9"], "ground_truth": "B"},
        {"images": [{"bytes": PNG, "path": None}], "problem": "<image>Find the angle.", "answer": "60",
         "id": "g2", "choices": ["30", "45", "60", "90"], "ground_truth": "C"},
    ]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(geometry), root / "geo3k-test.parquet")
    mathverse = [
        {"sample_index": "v1", "problem_index": "1", "problem_version": "Text Lite",
         "question": "Find the angle.\nChoices:\nA:30°\nB:45°\nC:60°\nD:90°", "image": "images/1.png",
         "answer": "C", "question_type": "multi-choice"},
        {"sample_index": "v2", "problem_index": "2", "problem_version": "Vision Only", "question": "Find the area.",
         "image": "images/2.png", "answer": "12", "question_type": "free-form"},
    ]
    (root / "mathverse.jsonl").write_text("\n".join(json.dumps(r) for r in mathverse) + "\n", encoding="utf-8")
    return {"mathvista": str(root / "testmini.json"), "geometry3k": str(root / "geo3k-test.parquet"),
            "mathverse": str(root / "mathverse.jsonl")}


# Canned responses: GREEDY[id] is the greedy answer, SAMPLES[id][j] sample j. Hand grading in the comments.
GREEDY = {
    "1": "<think>measure</think><answer>1.24 cm</answer>",   # right: precision 1 rounds to 1.2, unit dropped
    "2": "<think>count</think><answer>5</answer>",           # wrong (4)
    "3": "<think>same slope</think><answer>B</answer>",      # right: B = "equal to"
    "4": "The answer is (A).",                               # wrong (A = 2) and unformatted
    "g1": "<think>t</think><answer>5.20</answer>",           # right: 3 sqrt 3 = 5.196 ~ 5.20 = option B
    "g2": "<think>t</think><answer>\\boxed{D}</answer>",     # wrong (D = 90)
    "v1": "<think>t</think><answer>60°</answer>",            # right: the text of option C
    "v2": "<think>t</think><answer>12</answer>",             # right
}
SAMPLES = {
    "1": ["<answer>1.2</answer>", "<answer>1.3</answer>", "<answer>12</answer>"],      # 1/3
    "2": ["<answer>5</answer>"] * 3,                                                   # 0/3
    "3": ["<answer>equal to</answer>", "<answer>C</answer>", "<answer>A</answer>"],    # 1/3
    "4": ["<answer>C</answer>", "<answer>5</answer>", "<answer>D</answer>"],           # 2/3 (C = 5)
}


class Canned:
    """A `respond` hook that returns the canned texts and records how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, rows, keys, k, temperature):
        self.calls.append(([r["id"] for r in rows], list(keys), k, temperature))
        if temperature == 0:
            return [[GREEDY[r["id"]]] for r in rows]
        return [SAMPLES[r["id"]][:k] for r in rows]


def run_canned(dataset, k=0, temperature=0.0, index=None, respond_with=None, **kw):
    respond = Canned() if respond_with is None else (lambda rows, keys, k, t: [[respond_with(r)] * k for r in rows])
    index = list(range(len(dataset))) if index is None else index
    counts, examples = ev.evaluate_rows(dataset, index, respond, greedy=True, k=k, temperature=temperature,
                                        progress=False, **kw)
    return ev.summarize(counts, True, k), counts, examples, respond


# --- accuracy on each benchmark layout --------------------------------------------------------------

def test_mathvista_greedy_and_avg_at_k_match_hand_grading(bench_files):
    dataset = benchmarks.load_benchmark(bench_files["mathvista"])
    res, _, examples, respond = run_canned(dataset, k=3, temperature=1.0, batch_size=3, seed=2)
    assert res["accuracy"] == 2 / 4 and res["format"] == 3 / 4
    assert res["accuracy_multi_choice"] == 1 / 2 and res["accuracy_free_form"] == 1 / 2
    # Python floats: each side divides per question (4), adds (3) and divides once, in its own order
    close = rounding(8, 4 / 3, torch.float64)
    assert res["avg@3"] == pytest.approx((1 / 3 + 0 + 1 / 3 + 2 / 3) / 4, rel=0, abs=close)
    assert res["pass@3"] == 3 / 4
    assert res["avg@3_multi_choice"] == pytest.approx((1 / 3 + 2 / 3) / 2, rel=0, abs=close)
    assert res["avg@3_free_form"] == pytest.approx((1 / 3 + 0) / 2, rel=0, abs=close)
    # sampling keys depend on the question's global index only (seed * 1_000_003 + i), batches of 3 + 1
    assert [c[1] for c in respond.calls if c[3] > 0] == [[2_000_006, 2_000_007, 2_000_008], [2_000_009]]
    assert all(c[2] == 1 for c in respond.calls if c[3] == 0)  # greedy: one response per question
    # graded examples carry the response, the extracted answer and the verdict
    assert examples[0]["greedy"] == {"correct": 1.0, "official": 1.0, "format": 1.0, "read_right": None,
                                     "extracted": "1.24 cm", "response": GREEDY["1"]}
    assert [s["correct"] for s in examples[0]["samples"]] == [1.0, 0.0, 0.0] and len(examples) == 3


def test_geometry3k_accuracy(bench_files):
    # peers' prompt (the problem alone): free-form questions graded against the option text; g2's "D" is wrong
    # (official: mathruler, as EasyR1 grades it, wants the exact value -- 5.20 is not 3 sqrt 3 = 5.196...)
    res = run_canned(benchmarks.load_benchmark(bench_files["geometry3k"]))[0]
    assert (res["n"], res["n_multi_choice"], res["accuracy"], res["official"]) == (2, 0, 1 / 2, 0.0)
    assert res["accuracy_multi_choice"] is None and "avg@3" not in res
    # with the options shown (--show_choices 1) the letter D names option "90": still wrong, now multiple choice
    res = run_canned(benchmarks.load_benchmark(bench_files["geometry3k"], show_choices=True))[0]
    assert (res["n_multi_choice"], res["accuracy"]) == (2, 1 / 2)


def test_mathverse_accuracy(bench_files):
    res = run_canned(benchmarks.load_benchmark(bench_files["mathverse"]))[0]
    assert (res["n"], res["n_multi_choice"], res["accuracy"], res["format"]) == (2, 1, 1.0, 1.0)


def test_rank_strided_counts_add_up_to_the_whole(bench_files):
    dataset = benchmarks.load_benchmark(bench_files["mathvista"])
    _, whole, _, _ = run_canned(dataset, k=3, temperature=1.0)
    _, rank0, _, _ = run_canned(dataset, k=3, temperature=1.0, index=[0, 2])
    _, rank1, _, _ = run_canned(dataset, k=3, temperature=1.0, index=[1, 3])
    for key in ev.COUNT_KEYS:  # 4 non-negative per-question terms added in two orders
        assert abs(rank0[key] + rank1[key] - whole[key]) <= rounding(4, whole[key], torch.float64), key


def test_table_shows_every_benchmark_and_dashes_for_missing_kinds():
    results = {"visualmath": ev.summarize({"n": 2, "n_choice": 0, "greedy": 1, "greedy_format": 2,
                                           "greedy_choice": 0, "sampled": 1.5, "sampled_format": 2,
                                           "sampled_choice": 0, "sampled_pass": 2}, True, 4)}
    table = ev.format_table(results, k=4)
    assert "avg@4" in table.splitlines()[0] and "pass@4" in table.splitlines()[0]
    # n, greedy [Wilson CI of 1/2], official (0 of 2), multi-choice -, free-form, format, read -, lucky -, avg@4, pass@4
    assert re.search(r"visualmath\s+2\s+0\.5000 \[0\.09,0\.91\]\s+0\.0000 \[0\.00,0\.66\]\s+-\s+0\.5000\s+1\.0000"
                     r"\s+-\s+-\s+0\.7500 \[0\.75,0\.75\]\s+1\.0000", table), table
    two = ev.format_table({"a": {"n": 1, "accuracy": 1.0, "official": 0.5}, "b": {"n": 1, "accuracy": 0.0, "official": 0.0}})
    assert re.search(r"mean\s+-\s+0\.5000\s+0\.2500", two), two   # the suite's unweighted mean


def test_official_accuracy_follows_the_benchmark_not_our_grading():
    # MathVista integers: its scorer truncates "5.7" to "5" (right) and cannot parse "1,000" (wrong); ours is the reverse
    rows = [{"answer": "5", "choices": [], "source": "mathvista", "question_type": "free_form", "answer_type": "integer"},
            {"answer": "1000", "choices": [], "source": "mathvista", "question_type": "free_form",
             "answer_type": "integer"},
            {"answer": "D", "choices": [], "source": "mathverse", "question_type": "multi_choice"}]  # Vision Only
    c = ev.tally(rows, ["<answer>5.7</answer>", "<answer>1,000</answer>", "<answer>(D)</answer>"])
    assert (c["greedy"], c["greedy_official"], c["n_choice"]) == (2.0, 2.0, 1.0)
    assert [ev.grade(r, t)[::3] for r, t in zip(rows, ["<answer>5.7</answer>", "<answer>1,000</answer>"])] == [
        (0.0, 1.0), (1.0, 0.0)]


def test_mathverse_vision_only_is_counted_by_its_question_type(tmp_path):
    rows = benchmarks.load_benchmark(bench_fixtures.mathverse(str(tmp_path / "mathverse")))
    res = run_canned(rows, respond_with=lambda r: "<answer>D</answer>")[0]
    assert (res["n"], res["n_multi_choice"], res["n_free_form"]) == (10, 7, 3)  # 5 versions + (C) + False; 3 free-form


def test_group_metrics_over_dynamaths_variants(tmp_path):
    rows = benchmarks.load_benchmark(bench_fixtures.dynamath(str(tmp_path / "dynamath")))
    # right on seed questions 1 and 2 in every variant, wrong on 3 and 4: average 0.5, worst case 0.5
    answer = lambda r: r["answer"] if json.loads(r["meta"])["qid"] in ("1", "2") else "zzz"  # noqa: E731
    res = ev.evaluate(rows, lambda rs, keys, k, t: [[f"<answer>{answer(r)}</answer>"] for r in rs], k=0, batch_size=7)
    assert (res["n"], res["official"], res["groups"]) == (40, 0.5, {"worst_case": 0.5, "seeds": 4})
    # two ranks (rows strided), each summing the other's tensors into its own, as an all-reduce would: the same figures
    respond = lambda rs, keys, k, t: [[f"<answer>{answer(r)}</answer>"] for r in rs]  # noqa: E731
    sent = {0: [], 1: []}
    for rank in (0, 1):
        ev.evaluate(rows, respond, rank, 2, k=0, reduce=lambda t, r=rank: sent[r].append(t.clone()) or t)
    for rank in (0, 1):
        other = iter(sent[1 - rank])
        res = ev.evaluate(rows, respond, rank, 2, k=0, reduce=lambda t: t + next(other))
        assert (res["n"], res["official"], res["groups"]) == (40, 0.5, {"worst_case": 0.5, "seeds": 4})


def test_suite_paper_evaluates_all_nine_local_layouts_in_one_table(warm_checkpoint, tmp_path):
    bench_fixtures.build_suite(tmp_path / "data")
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, "eval.py", "--model", warm_checkpoint, "--suite", "paper", "--data_root",
                           str(tmp_path / "data"), "--limit", "2", "--max_new_tokens", "4", "--out", str(out)],
                          cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data_lines = [line for line in proc.stdout.splitlines() if line.startswith("data: ")]
    assert len(data_lines) == 9 and all(" rows=2 (limit)" in line for line in data_lines)
    assert "split=sample_variant1+...+sample_variant10 (10 splits)" in data_lines[1]
    saved = json.loads(out.read_text())
    titles = ["MathVerse", "DynaMath", "MMK12", "Geo3K", "MathVision", "We-Math", "LogicVista", "MMMU-Pro", "MathVista"]
    assert list(saved["results"]) == titles and saved["data"] == data_lines
    table = saved["table"].splitlines()
    assert [line.split()[0] for line in table[1:]] == titles + ["mean"] and "official [95% CI]" in table[0]
    assert all(saved["results"][t]["accuracy_ci"] for t in titles)   # every benchmark with its interval


def test_bad_flags_explain_themselves(tmp_path):
    with pytest.raises(SystemExit, match="--suite 'all'"):
        ev.parse_config(["--suite", "all"])
    with pytest.raises(SystemExit, match="--data_root"):
        ev.parse_config(["--suite", "paper", "--data_root", str(tmp_path / "absent")])
    with pytest.raises(SystemExit, match="--temperature"):
        ev.parse_config(["--k", "4"])
    with pytest.raises(SystemExit, match="anchor_query"):
        report.parse_config(["--anchor_query", "middle"])
    with pytest.raises(SystemExit, match="experiments/report.py"):  # the report's old entry point says where it went
        ev.main(["--report", "--model", ""])


# --- the real generation path -----------------------------------------------------------------------

def test_real_generation_in_process_equals_torchrun_with_two_ranks(warm_checkpoint, bench_files, tmp_path):
    model, tokenizer, image_processor = ev.load_model(warm_checkpoint, torch.device("cpu"))
    respond = ev.model_responder(model, tokenizer, image_processor, max_new_tokens=8)
    cfg = ev.parse_config(["--limit", "4"])
    results = {}
    for name in ("visualmath", bench_files["mathvista"]):
        dataset, line = ev.load_rows(name, cfg)
        assert line.startswith(f"data: {name} split=")   # the data line eval.py prints
        index = list(range(len(dataset)))
        counts, examples = ev.evaluate_rows(dataset, index, respond, True, 2, 1.0, batch_size=4, show=4,
                                            progress=False)
        # the counts are the grades of the very texts that were generated
        greedy = [ex["greedy"]["response"] for ex in examples]
        samples = [[s["response"] for s in ex["samples"]] for ex in examples]
        assert ev.tally([dataset[i] for i in index], greedy, samples) == counts
        results[name] = ev.summarize(counts, True, 2)
        if name == "visualmath":  # per-row keys: another batch size gives the same samples (equal-length prompts)
            again = ev.evaluate_rows(dataset, index, respond, True, 2, 1.0, batch_size=1, show=4, progress=False)[1]
            assert [[s["response"] for s in ex["samples"]] for ex in again] == samples
    # the CLI under torchrun: 2 gloo ranks, rows strided, counts all-reduced -> the same numbers
    out = tmp_path / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([*torchrun_command(2), "eval.py", "--model", warm_checkpoint, "--benchmark",
                           f"visualmath,{bench_files['mathvista']}", "--limit", "4", "--k", "2", "--temperature",
                           "1.0", "--max_new_tokens", "8", "--batch_size", "4", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.exists(), proc.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert saved["world"] == 2 and proc.stdout.count("avg@2") == 1  # the table is printed once (rank 0)
    got = {name: {k: v for k, v in res.items() if k != "examples"} for name, res in saved["results"].items()}
    assert got["visualmath"] == results["visualmath"]
    # MathVista's prompts differ in length: only greedy is comparable across batchings (see the xfail below)
    assert got[bench_files["mathvista"]]["accuracy"] == results[bench_files["mathvista"]]["accuracy"]


def test_samples_do_not_depend_on_the_padding_of_other_prompts(warm_checkpoint):
    model, tokenizer, image_processor = ev.load_model(warm_checkpoint, torch.device("cpu"))
    respond = ev.model_responder(model, tokenizer, image_processor, max_new_tokens=8)
    rows = [dict(visualmath.make_slots(2, seed=10_000)[i]) for i in range(2)]
    rows[1]["question"] += " Read both numbers carefully before you add them up."  # a longer prompt
    alone = respond(rows[:1], [7], 4, 1.0)[0]
    assert respond(rows, [7, 8], 4, 1.0)[0] == alone


# --- the connectivity report ------------------------------------------------------------------------

def test_report_page_has_every_part_and_its_pictures(warm_checkpoint, tmp_path):
    cfg = report.parse_config(["--model", warm_checkpoint, "--out_dir", str(tmp_path), "--responses",
                               "reference", "--n_stats", "12", "--n_show", "2"])
    summary = report.run_report(cfg, *ev.load_model(cfg.model, torch.device("cpu"), cfg.dtype))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    pictures = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(pictures) == sorted(["hist_predict.png", "hist_self.png", "overlay_predict_0.png",
                                       "overlay_predict_1.png", "overlay_self_0.png", "overlay_self_1.png"])
    for name in pictures:  # each exists and is a real picture, not an empty canvas
        img = PIL.Image.open(tmp_path / name).convert("RGB")
        assert img.width > 300 and len(img.getcolors(1 << 20)) > 50, name
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch: viewable offline
    # tokens coloured by density, anchors outlined, clusters subscripted, perception tokens underlined
    assert "background:rgba(230,85,13," in page and "outline:2px solid #000" in page
    assert "<sub" in page and "underline double" in page
    for query in ("predict", "self"):
        s = summary[query]
        assert s["responses"] == 12 and s["responses_scored"] == 12  # reference responses write every value
        assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1 and 0 < s["chance"] < 1
        assert 0 < s["upper_mode_fraction"] < 1 and s["bimodality_coefficient"] > 0
        # each response's 0.15 n rounded to a whole count of anchors (responses of >= 4 tokens): <= 1/2 each
        assert abs(s["anchor_fraction"] - 0.15) <= 0.5 * s["responses"] / s["tokens"]
        assert s["clusters_per_response"] >= 1
    assert json.loads((tmp_path / "report.json").read_text())["summary"] == summary


def test_generated_report_batch_puts_response_token_t_at_column_p_plus_t(warm_checkpoint):
    model, tokenizer, image_processor = ev.load_model(warm_checkpoint, torch.device("cpu"))
    rows = [visualmath.make_slots(2, seed=5)[i] for i in range(2)]
    for mode in ("generated", "reference"):
        inputs, full_mask, resp_mask, P = report.report_batch(model, tokenizer, image_processor, rows, mode, 8)
        assert torch.equal(full_mask[:, P:], resp_mask) and not full_mask[:, :P].any()
        assert torch.equal(resp_mask, resp_mask.cummin(dim=1).values)  # responses are right-padded after P
        assert (inputs["attention_mask"].bool() | ~full_mask).all()


def test_perception_values_map_to_exactly_their_tokens(warm_checkpoint):
    tokenizer = family.load_processor(warm_checkpoint)[0]
    response = "<think>9+4=13</think><answer>13</answer>"
    ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    spans = report.token_char_spans(tokenizer, ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == response and spans[-1][0] == spans[-1][1]
    truth = report.overlapping_tokens(spans, visualmath.locate_perception(response, ["9", "4"]))
    assert [tokenizer.decode([i]) for i, t in zip(ids, truth) if t] == ["9", "4"]


def test_otsu_split_and_bimodality_find_a_planted_upper_mode():
    gen = torch.Generator().manual_seed(0)
    low, high = 0.05 + 0.01 * torch.randn(170, generator=gen), 0.6 + 0.05 * torch.randn(30, generator=gen)
    threshold, upper = report.otsu_split(torch.cat([low, high]))
    assert 0.1 < threshold < 0.45 and upper == 0.15                # round(30 / 200, 6): exact
    gaussian = torch.randn(500, generator=gen)
    assert report.bimodality_coefficient(torch.cat([low, high])) > 5 / 9 > report.bimodality_coefficient(gaussian)
    assert report.otsu_split(torch.full((4,), 0.3)) == (torch.tensor(0.3).item(), 0.0)  # one value (0.3 in float32)


# --- curves -----------------------------------------------------------------------------------------

def test_curves_png_from_train_logs(tmp_path):
    for arm, slope in (("atrl", 0.02), ("uniform", 0.01)):
        run = tmp_path / arm
        run.mkdir()
        lines = [{"config": {"weighting": arm}, "world": 1}, {"step": -1, "eval_accuracy": 0.3, "eval_format": 0.9}]
        for step in range(12):
            lines.append({"step": step, "reward": 0.3 + slope * step, "accuracy": 0.25 + slope * step, "format": 0.9,
                          "anchor_frac": 0.15, "clusters": 3 + step % 2, "w_max": 1.6, "w_anchor_mean": 1.3,
                          "loss": 0.0, **({"eval_accuracy": 0.3 + slope * step} if step % 4 == 3 else {})})
        (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ev.main(["--curves", f"{tmp_path / 'atrl' / 'log.jsonl'},{tmp_path / 'uniform' / 'log.jsonl'}",
             "--out_dir", str(tmp_path / "plots")])
    img = PIL.Image.open(tmp_path / "plots" / "curves.png").convert("RGB")
    assert img.width > 1000 and len(img.getcolors(1 << 20)) > 50
    (tmp_path / "bad.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(SystemExit, match="not a train.py log"):
        ev.read_log(str(tmp_path / "bad.jsonl"))


def test_docstring_examples(doctest_examples):
    assert doctest_examples(ev, ("tally", "wilson_interval", "mean_interval", "summarize")) > 0
    assert doctest_examples(report, ("overlapping_tokens", "anchor_precision_recall", "otsu_split",
                                     "bimodality_coefficient")) > 0
