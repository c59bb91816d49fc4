"""Benchmark loaders (tasks/layouts.py, tasks/suite.py, tasks/benchmarks.py, tasks/splits.py) on copies of the real
releases' layouts written here (tests/bench_fixtures.py): which files are a split, which rows load, what is skipped
and said so, and the errors that name the file, the row and the splits present.

Each expected count is read off the fixture: e.g. MathVerse's folder holds testmini.parquet (10 rows), testmini.json
(the same 10) and the text-only config (2 + 2), so split testmini must give exactly 10. Nothing is downloaded.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_loaders.py
"""

import json
import os

import PIL.Image
import pyarrow
import pyarrow.parquet
import pytest

import bench_fixtures
from conftest import png_bytes
from tasks import benchmarks, grading, layouts, scorers, splits, suite, visualmath


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    return bench_fixtures.build_suite(tmp_path_factory.mktemp("releases"))


def write_parquet(path, rows):
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def touch(root, *names, rows=({"question": "q", "answer": "1"},)):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".parquet"):
            write_parquet(path, list(rows))
        elif name.endswith(".jsonl"):
            write_jsonl(path, list(rows))
        else:
            path.write_text(json.dumps(list(rows)))


# --- which files are a split (the hub's rules, tasks/layouts.py) ----------------------------------------------------

def test_split_names_are_matched_exactly_never_as_substrings(tmp_path):
    touch(tmp_path, "test.jsonl", "testmini.jsonl")
    assert [os.path.basename(f) for f in layouts.find_split(str(tmp_path), "test")[0]] == ["test.jsonl"]
    assert [os.path.basename(f) for f in layouts.find_split(str(tmp_path), "testmini")[0]] == ["testmini.jsonl"]


def test_one_copy_per_split_parquet_before_json_and_metadata_files_are_not_rows(tmp_path):
    touch(tmp_path, "testmini.json", "testmini.parquet", "annot_testmini.json", "source.json", "README.md")
    (tmp_path / "images.zip").write_bytes(b"PK")
    assert layouts.split_names(str(tmp_path)) == ["testmini"]
    assert [os.path.basename(f) for f in layouts.find_split(str(tmp_path), "testmini")[0]] == ["testmini.parquet"]


def test_every_shard_of_a_split_is_read_in_order(tmp_path):
    names = [f"data/train-0000{i}-of-00003-{h}.parquet" for i, h in enumerate("cab")]
    touch(tmp_path, *names, "data/test-00000-of-00001.parquet")
    assert [os.path.relpath(f, tmp_path) for f in layouts.find_split(str(tmp_path), "train")[0]] == names


def test_keyword_rule_and_the_fallback_split(tmp_path):
    touch(tmp_path / "a", "geo3k-train.parquet", "geo3k_test.parquet")
    assert sorted(layouts.split_names(str(tmp_path / "a"))) == ["test", "train"]
    touch(tmp_path / "b", "39Krelease.parquet")
    assert layouts.split_names(str(tmp_path / "b")) == ["train"]      # datasets' fallback: everything is train
    touch(tmp_path / "c", "train.json")
    assert layouts.split_names(str(tmp_path / "c")) == ["train"]


def test_an_unknown_split_is_one_line_naming_the_splits_present(releases):
    with pytest.raises(ValueError) as err:
        benchmarks.load_split(releases["geometry3k"], "testmini")
    message = str(err.value)
    assert "\n" not in message and "'testmini'" in message
    assert "train (1 file), validation (1 file), test (1 file)" in message


def test_readme_configs_pick_the_config_that_holds_the_split(releases):
    files, config = layouts.find_split(releases["mathverse"], "testmini")
    assert config == "testmini" and [os.path.basename(f) for f in files] == ["testmini.parquet"]
    with pytest.raises(ValueError, match="several configs"):  # MMMU-Pro's split test is in two configs
        layouts.find_split(releases["mmmu_pro"], "test")
    files, _ = layouts.find_split(releases["mmmu_pro"], "test", "vision")
    assert files[0].endswith(os.path.join("vision", "test-00000-of-00001.parquet"))


def test_a_variant_glob_does_not_take_its_tens(releases):
    files, _ = layouts.find_split(releases["dynamath"], "sample_variant1")
    assert [os.path.basename(f) for f in files] == ["sample1-00000-of-00001.parquet"]


@pytest.mark.parametrize("module,names", [(layouts, ["readme_configs", "infer_split"]),
                                          (suite, ["benchmark", "detect_schema", "split_inline_choices"]),
                                          (benchmarks, ["format_question", "data_line"]),
                                          (scorers, ["levenshtein", "wemath_four_dimensions"])])
def test_docstring_examples(doctest_examples, module, names):
    assert doctest_examples(module, names) > 0


# --- each release, loaded as papers use it ---------------------------------------------------------------------------

def test_geometry3k_trains_on_train_and_evaluates_on_test(releases):
    train, info = benchmarks.load_split(releases["geometry3k"], role="train")
    assert (info["split"], len(train)) == ("train", 5)
    test, info = benchmarks.load_split(releases["geometry3k"], role="eval")
    assert (info["split"], len(test)) == ("test", 4)
    assert len(benchmarks.load_split(releases["geometry3k"], "validation")[0]) == 2   # the old schema: no id, choices
    # EasyR1's spelling names the split too
    assert benchmarks.load_split(releases["geometry3k"] + "@train", role="eval")[1]["split"] == "train"
    row = train[0]
    assert row["question"] == "Find PT" and row["answer"] == "\\frac { 20 } { 3 }" and row["image"].mode == "RGBA"
    # peers' prompt: the problem alone, graded against the option text
    assert row["choices"] == [] and row["question_type"] == "free_form"
    assert grading.is_correct("20/3", row["answer"]) and not grading.is_correct("B", row["answer"])
    shown = benchmarks.load_split(releases["geometry3k"], "train", show_choices=True)[0][0]
    assert shown["choices"][1] == row["answer"] and grading.is_correct("B", shown["answer"], shown["choices"])
    assert json.loads(row["meta"])["options"] == ["6", "\\frac { 20 } { 3 }", "7", "22 / 3"]


def test_mathvista_hub_snapshot_reads_testmini_and_refuses_the_answerless_test(releases):
    rows, info = benchmarks.load_split(releases["mathvista"])
    assert (info["split"], len(rows)) == ("testmini", len(bench_fixtures.MATHVISTA_TESTMINI))  # annot_*.json is no row
    by_id = {r["id"]: r for r in rows}
    assert by_id["1"]["precision"] == 1 and by_id["108"]["precision"] == 2 and by_id["5"]["precision"] is None
    assert by_id["2"]["unit"] == "g" and by_id["237"]["choices"][1] == "stay the same "
    assert by_id["5"]["question_type"] == "multi_choice" and by_id["506"]["answer_type"] == "list"
    with pytest.raises(ValueError, match="no row has a gold answer"):
        benchmarks.load_split(releases["mathvista"], "test")
    with pytest.raises(ValueError, match="evaluation benchmark"):
        benchmarks.load_split(releases["mathvista"], role="train")


def test_mathvista_github_dict_layout_reads_images_beside_the_json(releases):
    rows, info = benchmarks.load_split(releases["mathvista_github"])
    assert (info["split"], len(rows)) == ("testmini", 5)          # data/query.json is not a split
    by_id = {r["id"]: r for r in rows}
    assert by_id["1"]["precision"] == 1 and by_id["4"]["precision"] == 2 and by_id["3"]["unit"] == "years"
    assert isinstance(by_id["2"]["image"], PIL.Image.Image)


def test_mathverse_snapshot_loads_each_row_once_and_vision_only_gets_its_own_prompt(releases):
    rows, info = benchmarks.load_split(releases["mathverse"])
    assert (info["split"], info["config"], len(rows)) == ("testmini", "testmini", 10)   # not 20, not 24
    assert len({r["id"] for r in rows}) == 10
    by_version = {json.loads(r["meta"])["version"]: r for r in rows if json.loads(r["meta"])["problem"] == "1"}
    assert by_version["Text Lite"]["choices"] == ["40°", "60°", "120°", "140°"]
    vision_only = by_version["Vision Only"]
    assert vision_only["question"] == bench_fixtures._MV_VISION_ONLY and vision_only["choices"] == []
    assert vision_only["question_type"] == "multi_choice"             # counted by its label, not its (no) options
    assert {r["question_type"] for r in rows} == {"multi_choice", "free_form"}
    with pytest.raises(ValueError, match=r"no usable row \(2 without an image\)"):  # the text-only config: all skipped
        benchmarks.load_split(releases["mathverse"], "testmini_text_only")


def test_virl39k_loads_with_its_text_only_rows_skipped_and_counted(releases):
    rows, info = benchmarks.load_split(releases["virl39k"], role="train")
    assert (info["split"], len(rows), info["skipped"]) == ("train", 5, {"no image": 3})
    assert info["images_dropped"] == 1 and info["multi_image_rows"] == 1
    line = benchmarks.data_line(info, "training")
    assert line.startswith(f"data: {releases['virl39k']} split=train rows=5 skipped=3 (no image 3)")
    by_id = {r["id"]: r for r in rows}
    assert by_id["q1"]["answer"] == "B" and by_id["q1"]["choices"] == ["odd", "even"]
    assert by_id["q3"]["answer"] == "\\frac{3}{4}" and by_id["q4"]["images_total"] == 2
    assert by_id["q5"]["choices"] == ["2", "4", "6", "8"] and by_id["q5"]["question"] == "Which value is the area?"
    meta = json.loads(by_id["q3"]["meta"])
    assert meta["pass_rate_7b_base"] == 0.25 and json.loads(by_id["q1"]["meta"])["pass_rate_7b_base"] is None
    assert "PassRate_7BUntrained" not in open(os.path.join(releases["virl39k"], "39Krelease.parquet"), "rb").read().decode(
        "latin-1")


def test_dynamath_reads_every_variant_with_one_line_choices(releases):
    rows, info = benchmarks.load_split(releases["dynamath"])
    assert len(rows) == 40 and info["split"].count("+") == 9
    assert len({r["id"] for r in rows}) == 40 and rows[0]["id"] == "1@sample_variant1"
    mc = next(r for r in rows if r["answer_type"] == "multiple choice")
    assert mc["question"] == "Is this a periodic function?" and mc["choices"] == ["Yes", "No"]
    assert {json.loads(r["meta"])["qid"] for r in rows} == {"1", "2", "3", "4"}


def test_mmk12_shards_without_a_card_and_inline_options_of_three_spellings(releases):
    test = benchmarks.load_split(releases["mmk12"])[0]
    assert [r["choices"] for r in test][:3] == [["I", "II", "III", "IV"], ["甲", "乙", "丙", "丁"],
                                                 ["1.2 A", "2.3.", "3.4 A", "4.5 A"]]
    assert all(r["question_type"] == "multi_choice" for r in test)
    train = benchmarks.load_split(releases["mmk12"], role="train")[0]
    assert [r["answer"] for r in train] == ["$$32$$", "30°", "25°."] and grading.is_correct("32", train[0]["answer"])


def test_mathvision_is_not_mistaken_for_mathvista_and_hides_letter_options(releases):
    rows, info = benchmarks.load_split(releases["mathvision"])
    assert (info["schema"], info["split"], len(rows)) == ("mathvision", "test", 5)
    assert len(benchmarks.load_split(releases["mathvision"], "testmini")[0]) == 2
    assert rows[0]["choices"] == [] and rows[0]["question_type"] == "multi_choice"      # options A-E are pictures
    assert rows[1]["choices"][0] == "$\\Delta, \\square, \\bullet$" and rows[2]["question_type"] == "free_form"


def test_wemath_options_string_and_step_keys(releases):
    rows = benchmarks.load_split(releases["wemath"])[0]
    assert [len(r["choices"]) for r in rows] == [5, 4, 5, 5, 5, 5, 4]
    assert rows[3]["choices"][:4] == ["F", "D", "B", "I"] and rows[4]["choices"][3] == "30, 50, 40"
    assert rows[0]["id"] == "1/2steps_1" and json.loads(rows[2]["meta"])["key"] == "2steps_multi"


def test_logicvista_skips_its_empty_row_and_reads_the_github_layout(releases):
    rows, info = benchmarks.load_split(releases["logicvista"])
    assert len(rows) == 5 and info["skipped"] == {"no gold answer": 1}
    assert [r["answer"] for r in rows][:3] == ["C", "A, C", "B, D"]
    github, info = benchmarks.load_split(releases["logicvista_github"])
    assert len(github) == 2 and github[1]["id"] == "v1_1" and isinstance(github[0]["image"], PIL.Image.Image)


def test_mmmu_pro_configs_in_folders_with_spaces_and_its_multi_image_rows(releases):
    rows, info = benchmarks.load_split(releases["mmmu_pro"])
    assert info["config"] == "standard (10 options)" and len(rows) == 3
    assert rows[0]["choices"] == [str(x) for x in range(2, 21, 2)]                  # ast.literal_eval of a string
    assert rows[2]["images_total"] == 2 and info["images_dropped"] == 1
    vision = benchmarks.load_split(releases["mmmu_pro"], config="vision")[0]
    assert vision[0]["question"] == suite.MMMU_VISION_QUESTION and vision[0]["choices"] == []
    assert json.loads(vision[0]["meta"])["options"][1] == "4"


# --- train and evaluate on the right rows (tasks/splits.py) ----------------------------------------------------------

def test_training_data_trains_on_train_evaluates_on_test_and_says_so(releases):
    train, held_out, test, lines = splits.training_data(releases["geometry3k"], eval_size=3)
    assert len(train) == 5 and len(held_out) == 3 and test is None
    assert lines == [f"data: {releases['geometry3k']} split=train rows=5 (training)",
                     f"data: {releases['geometry3k']} split=test rows=3 (limit) (evaluation)"]


def test_training_and_evaluating_on_the_same_rows_is_refused_unless_allowed(releases):
    with pytest.raises(ValueError, match="same rows") as err:
        splits.training_data(releases["geometry3k"], eval_split="train")
    assert "\n" not in str(err.value) and "--allow_same_rows" in str(err.value)
    _, held_out, _, lines = splits.training_data(releases["geometry3k"], eval_split="train", allow_same_rows=True)
    assert len(held_out) == 5 and "SAME ROWS" in lines[-1]


def test_an_evaluation_only_benchmark_or_a_test_file_is_not_trained_on_by_default(releases, tmp_path):
    with pytest.raises(ValueError, match="evaluation benchmark"):
        splits.training_data(releases["mathverse"])
    path = write_parquet(tmp_path / "geo3k-test.parquet", [{"images": [bench_fixtures.img()], "problem": "p",
                                                             "answer": "1"}])
    with pytest.raises(ValueError, match="--split test"):
        splits.training_data(str(path))
    assert len(splits.training_data(str(path), split="test", eval_size=0)[0]) == 1


def test_synthetic_task_keeps_its_disjoint_seed_and_says_its_data_line():
    train, held_out, test, lines = splits.training_data("visualmath-v1", train_size=4, eval_size=2, seed=3, test_size=1)
    assert lines == ["data: visualmath-v1 split=seed3 rows=4 (training)",
                     "data: visualmath-v1 split=seed10003 rows=2 (evaluation, held out)",
                     "data: visualmath-v1 split=seed20003 rows=1 (test, never used to choose)"]
    assert train[0]["id"] == visualmath.make("visualmath-v1", 4, seed=3)[0]["id"]
    assert held_out[0]["id"] == visualmath.make("visualmath-v1", 2, seed=10_003)[0]["id"]
    assert test[0]["id"] == visualmath.make("visualmath-v1", 1, seed=20_003)[0]["id"]


def test_a_training_set_without_an_evaluation_split_evaluates_nothing_by_default(releases):
    _, held_out, _, lines = splits.training_data(releases["virl39k"])
    assert held_out is None and lines[-1].startswith("data: no evaluation")


# --- errors name the file, the row and the field ---------------------------------------------------------------------

def good_row(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes("RGB"))
    return {"pid": "1", "question": "q?", "image": "ok.png", "choices": None, "answer": "1"}


@pytest.mark.parametrize("row_change,must_mention", [
    ({"question": None}, ["row 1", "'question'"]),
    ({"image": "nope/missing.png"}, ["row 1", "nope/missing.png", "not found"]),
    ({"image": 3.5}, ["row 1", "'image'", "no usable image"]),
    ({"precision": "two"}, ["row 1", "'precision'"]),
])
def test_bad_row_raises_naming_file_row_and_field(tmp_path, row_change, must_mention):
    rows = [good_row(tmp_path), {**good_row(tmp_path), "pid": "2", **row_change}]
    path = write_jsonl(tmp_path / "bench.jsonl", rows)
    with pytest.raises(ValueError) as err:
        benchmarks.load_benchmark(str(path), schema="mathvista")
    for text in [str(path)] + must_mention:
        assert text in str(err.value)


@pytest.mark.parametrize("row_change,reason", [({"answer": None}, "no gold answer"), ({"answer": "  "}, "no gold answer"),
                                               ({"image": None}, "no image"), ({"pid": "1"}, "duplicate id")])
def test_rows_without_gold_or_image_and_repeated_ids_are_skipped_and_counted(tmp_path, row_change, reason):
    rows = [good_row(tmp_path), {**good_row(tmp_path), "pid": "2", **row_change}]
    ds, info = benchmarks.load_split(str(write_jsonl(tmp_path / "bench.jsonl", rows)), schema="mathvista")
    assert len(ds) == 1 and info["skipped"] == {reason: 1}


def test_corrupt_image_bytes_and_files_are_reported(tmp_path):
    rows = [{"images": [{"bytes": b"not a png", "path": None}], "problem": "p", "answer": "1"}]
    with pytest.raises(ValueError, match=r"g.parquet: row 0: field 'image' .*not an image"):
        benchmarks.load_benchmark(str(write_parquet(tmp_path / "g.parquet", rows)))
    (tmp_path / "fake.png").write_text("hello")
    row = {**good_row(tmp_path), "image": "fake.png"}
    with pytest.raises(ValueError, match=r"b.jsonl: row 0: image file .*fake.png.*not an image"):
        benchmarks.load_benchmark(str(write_jsonl(tmp_path / "b.jsonl", [row])))


def test_unknown_schema_and_bad_inputs_explain_themselves(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hi", "label": 1}])
    with pytest.raises(ValueError, match="schema="):
        benchmarks.load_benchmark(str(path))
    with pytest.raises(ValueError, match="unknown"):
        benchmarks.load_benchmark(str(path), schema="mmmu")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        benchmarks.load_benchmark(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="not found"):
        benchmarks.load_benchmark(str(tmp_path / "absent.parquet"))
    (tmp_path / "broken.jsonl").write_text('{"pid": 1}\n{oops\n')
    with pytest.raises(ValueError, match="broken.jsonl: line 2"):
        benchmarks.load_benchmark(str(tmp_path / "broken.jsonl"))
    with pytest.raises(ValueError, match="holds split 'x'"):
        benchmarks.load_benchmark(str(path), split="test")


# --- helpers --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,question,choices", [
    ("Q?\nA. 1\nB. 2", "Q?", ["1", "2"]),
    ("Q?\nOptions:\n(A) x y\n(B) z", "Q?", ["x y", "z"]),
    ("Q?\nA、甲\nB、乙", "Q?", ["甲", "乙"]),                                   # MMK12
    ("Q? Choices: (A) Yes (B) No", "Q?", ["Yes", "No"]),                      # DynaMath, one line
    ("Which?\nA. 2 B. 4 C. 6 D. 8", "Which?", ["2", "4", "6", "8"]),          # ViRL39K, one line
    ("Q?\nA. 1\nC. 2", "Q?\nA. 1\nC. 2", []),            # not consecutive letters: left alone
    ("Q?\nA. only one", "Q?\nA. only one", []),
    ("Points A, B and C.", "Points A, B and C.", []),
    ("Point A: (1,2). Point B: (3,4).", "Point A: (1,2). Point B: (3,4).", []),
])
def test_split_inline_choices(text, question, choices):
    assert benchmarks.split_inline_choices(text) == (question, choices)


def test_format_question_without_choices_is_the_question():
    assert benchmarks.format_question({"question": "How many?", "choices": []}) == "How many?"


@pytest.mark.parametrize("module", [benchmarks, suite, layouts, scorers])
def test_data_modules_bind_each_top_level_name_once(module):
    # a second `_LETTERS = ...` further down silently rebinds the first for every function of the module
    import ast
    import collections
    bound = collections.Counter()
    for node in ast.parse(open(module.__file__, encoding="utf-8").read()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound[node.name] += 1
        elif isinstance(node, ast.Assign):
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert [name for name, count in bound.items() if count > 1] == []


def test_benchmarks_and_synthetic_data_share_the_unified_columns(releases):
    # Benchmark rows carry the shared columns plus four of their own; on the shared ones both concatenate (the
    # synthetic rows are plain dicts, tasks/visualmath.Rows: typed by the schema once they meet a Dataset).
    import datasets
    bench = benchmarks.load_benchmark(releases["geometry3k"])
    synthetic = visualmath.make_slots(2, seed=0)
    assert bench.features == benchmarks.BENCHMARK_FEATURES
    assert synthetic.column_names == list(bench.features)[:10] == list(benchmarks.UNIFIED_FEATURES)
    typed = datasets.Dataset.from_list(list(synthetic), features=benchmarks.UNIFIED_FEATURES)
    both = datasets.concatenate_datasets([bench.select_columns(list(benchmarks.UNIFIED_FEATURES)), typed])
    assert len(both) == 6


def test_importing_the_loaders_does_not_import_datasets():
    import subprocess
    import sys
    code = "import sys; from tasks import benchmarks, splits, scorers; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
