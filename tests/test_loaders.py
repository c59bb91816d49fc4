"""Benchmark loaders (tasks/benchmarks.py §Loaders): each schema from small fixture files written here.

Fixtures mimic the real column layouts (Geometry3K as in hiyouga/geometry3k's parquet, MathVista's
testmini.json {pid: row}, MathVerse rows with choices inside the question, ViRL39K rows with
\\boxed{} answers and image path lists) with tiny PNGs in odd modes (L, RGBA, P). The hub code path
needs network and is not exercised.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_loaders.py
"""

import json

import PIL.Image
import pyarrow
import pyarrow.parquet
import pytest

from tasks import benchmarks, grading, visualmath
from conftest import png_bytes


def write_png(path, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(mode))
    return path


def write_parquet(path, rows):
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# --- one fixture per schema -----------------------------------------------------------------------

def test_geometry3k_parquet_with_image_bytes(tmp_path):
    # hiyouga/geometry3k: images = list of {"bytes", "path"} structs, "<image>" in the problem.
    rows = [
        {"images": [{"bytes": png_bytes("L"), "path": None}], "problem": "<image>Find x.",
         "answer": "3\\sqrt{3}", "id": 7, "choices": ["3", "3\\sqrt{3}", "6", "9"], "ground_truth": "B"},
        {"images": [{"bytes": png_bytes("RGBA"), "path": None}], "problem": "<image>Find y.",
         "answer": "60", "id": 8, "choices": ["30", "45", "60", "90"], "ground_truth": "C"},
    ]
    ds = benchmarks.load_benchmark(str(write_parquet(tmp_path / "test-00000.parquet", rows)))
    assert len(ds) == 2 and list(ds.features) == list(benchmarks.UNIFIED_FEATURES)
    ex = ds[0]
    assert ex["id"] == "7" and ex["question"] == "Find x." and ex["answer"] == "3\\sqrt{3}"
    assert ex["choices"] == ["3", "3\\sqrt{3}", "6", "9"] and ex["source"] == "geometry3k"
    assert ex["perception"] == [] and ex["response"] == "" and ex["precision"] is None
    assert isinstance(ex["image"], PIL.Image.Image) and ex["image"].mode == "L"
    assert ds[1]["image"].mode == "RGBA"
    # the gold is option text; a letter answer from the model grades through the choices
    reward = grading.compute_reward("<think>.</think><answer>B</answer>", ex["answer"], ex["choices"])
    assert reward["accuracy"] == 1.0


def test_mathvista_json_dict_with_relative_image_paths(tmp_path):
    # MathVista's testmini.json is {pid: row}; image paths are relative to the json's folder.
    write_png(tmp_path / "images" / "1.png", "P")
    write_png(tmp_path / "images" / "2.png", "RGB")
    rows = {
        "1": {"pid": "1", "question": "What is the length?", "image": "images/1.png", "choices": None,
              "unit": "cm", "precision": 1.0, "answer": "1.2", "question_type": "free_form",
              "answer_type": "float", "query": "Hint: ... What is the length?"},
        "2": {"pid": "2", "question": "The derivative at x=2 is ____ that at x=5",
              "image": "images/2.png", "choices": ["larger than", "equal to", "smaller than"],
              "unit": None, "precision": None, "answer": "equal to", "question_type": "multi_choice",
              "answer_type": "text", "query": "..."},
    }
    (tmp_path / "testmini.json").write_text(json.dumps(rows), encoding="utf-8")
    ds = benchmarks.load_benchmark(str(tmp_path / "testmini.json"))
    a, b = ds[0], ds[1]
    assert (a["id"], a["precision"], a["unit"], a["choices"], a["source"]) == ("1", 1, "cm", [], "mathvista")
    assert a["image"].mode == "P" and b["image"].mode == "RGB"
    assert b["answer"] == "equal to" and b["choices"][1] == "equal to"
    assert benchmarks.format_question(b).endswith("\nChoices:\nA. larger than\nB. equal to\nC. smaller than")
    # precision flows into the reward: 1.24 rounds to the gold 1.2
    reward = grading.compute_reward("<answer>1.24</answer>", a["answer"], precision=a["precision"])
    assert reward["accuracy"] == 1.0
    assert grading.compute_reward("<answer>B</answer>", b["answer"], b["choices"])["accuracy"] == 1.0


def test_mathvista_parquet_prefers_decoded_image(tmp_path):
    rows = [{"pid": "5", "question": "How many?", "image": "images/missing.jpg",
             "decoded_image": {"bytes": png_bytes("RGB"), "path": None}, "choices": None,
             "precision": None, "unit": "", "answer": "4", "question_type": "free_form",
             "answer_type": "integer", "query": "How many?"}]
    ds = benchmarks.load_benchmark(str(write_parquet(tmp_path / "mv.parquet", rows)), schema="mathvista")
    assert ds[0]["image"].size == (6, 4) and ds[0]["answer"] == "4"


def test_mathverse_jsonl_splits_inline_choices(tmp_path):
    write_png(tmp_path / "img" / "a.png", "RGBA")
    rows = [
        {"sample_index": "1", "problem_index": "1", "problem_version": "Text Lite",
         "question": "As shown in the figure, find the angle.\nChoices:\nA:30°\nB:45°\nC:60°\nD:90°",
         "image": "img/a.png", "answer": "C", "question_type": "multi-choice"},
        {"sample_index": "2", "problem_index": "1", "problem_version": "Vision Only",
         "question": "Find the area.", "image": "img/a.png", "answer": "12",
         "question_type": "free-form"},
    ]
    ds = benchmarks.load_benchmark(str(write_jsonl(tmp_path / "testmini.jsonl", rows)))
    assert ds[0]["question"] == "As shown in the figure, find the angle."
    assert ds[0]["choices"] == ["30°", "45°", "60°", "90°"] and ds[0]["source"] == "mathverse"
    assert ds[1]["choices"] == [] and ds[1]["question"] == "Find the area."
    assert grading.is_correct("60", ds[0]["answer"], ds[0]["choices"])  # option text -> letter C


def test_virl39k_unwraps_boxed_answers_and_takes_first_image(tmp_path):
    write_png(tmp_path / "images" / "q1.png", "L")
    write_png(tmp_path / "images" / "q1b.png", "RGB")
    write_png(tmp_path / "images" / "q2.png", "RGB")
    rows = [
        {"qid": "q1", "question": "<image>Which shape is largest?\nA. circle\nB. square\nC. triangle",
         "answer": "\\boxed{B}", "image": ["images/q1.png", "images/q1b.png"],
         "category": "(GradeSchool) Geometric",
         "source": "MMK12", "PassRate_32BTrained": 0.5, "PassRate_7BUntrained": None},
        {"qid": "q2", "question": "<image>Compute the sum.", "answer": "\\boxed{17^\\circ}",
         "image": ["images/q2.png"], "category": "Tables", "source": "x",
         "PassRate_32BTrained": 1.0, "PassRate_7BUntrained": 0.25},
    ]
    ds = benchmarks.load_benchmark(str(write_parquet(tmp_path / "39Krelease.parquet", rows)))
    assert ds[0]["answer"] == "B" and ds[0]["choices"] == ["circle", "square", "triangle"]
    assert ds[0]["question"] == "Which shape is largest?" and ds[0]["image"].mode == "L"
    assert ds[1]["answer"] == "17^\\circ" and ds[1]["source"] == "virl39k"
    assert grading.is_correct("17", ds[1]["answer"])


def test_limit_and_split_folder_selection(tmp_path):
    def rows(n, tag):
        return [{"images": [{"bytes": png_bytes("RGB"), "path": None}], "problem": f"{tag} {i}",
                 "answer": str(i)} for i in range(n)]
    write_parquet(tmp_path / "train-00000.parquet", rows(5, "train"))
    write_parquet(tmp_path / "test-00000.parquet", rows(3, "test"))
    ds = benchmarks.load_benchmark(str(tmp_path), split="test")
    assert len(ds) == 3 and ds[0]["question"] == "test 0"
    assert len(benchmarks.load_benchmark(str(tmp_path), split="train", limit=2)) == 2


# --- errors name the row and the field -----------------------------------------------------------

def good_row(tmp_path):
    write_png(tmp_path / "ok.png", "RGB")
    return {"pid": "1", "question": "q?", "image": "ok.png", "choices": None, "answer": "1"}


@pytest.mark.parametrize("row_change,must_mention", [
    ({"answer": None}, ["row 1", "'answer'"]),
    ({"answer": "  "}, ["row 1", "'answer'", "empty"]),
    ({"question": None}, ["row 1", "'question'"]),
    ({"image": "nope/missing.png"}, ["row 1", "nope/missing.png", "not found"]),
    ({"image": None}, ["row 1", "'decoded_image' or 'image'"]),
    ({"image": 3.5}, ["row 1", "'image'", "no usable image"]),
    ({"precision": "two"}, ["row 1", "'precision'"]),
])
def test_bad_row_raises_naming_row_and_field(tmp_path, row_change, must_mention):
    rows = [good_row(tmp_path), {**good_row(tmp_path), **row_change}]
    path = write_jsonl(tmp_path / "bench.jsonl", rows)
    with pytest.raises(ValueError) as err:
        benchmarks.load_benchmark(str(path), schema="mathvista")
    for text in must_mention:
        assert text in str(err.value)


def test_corrupt_image_bytes_and_files_are_reported(tmp_path):
    rows = [{"images": [{"bytes": b"not a png", "path": None}], "problem": "p", "answer": "1"}]
    with pytest.raises(ValueError, match=r"row 0: field 'images' .*not an image"):
        benchmarks.load_benchmark(str(write_parquet(tmp_path / "g.parquet", rows)))
    (tmp_path / "fake.png").write_text("hello")
    row = {**good_row(tmp_path), "image": "fake.png"}
    with pytest.raises(ValueError, match=r"row 0: image file .*fake.png.*not an image"):
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
    with pytest.raises(ValueError, match="line 2"):
        benchmarks.load_benchmark(str(tmp_path / "broken.jsonl"))


# --- helpers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,question,choices", [
    ("Q?\nA. 1\nB. 2", "Q?", ["1", "2"]),
    ("Q?\nOptions:\n(A) x y\n(B) z", "Q?", ["x y", "z"]),
    ("Q?\nA. 1\nC. 2", "Q?\nA. 1\nC. 2", []),            # not consecutive letters: left alone
    ("Q?\nA. only one", "Q?\nA. only one", []),
    ("Points A, B and C.", "Points A, B and C.", []),
])
def test_split_inline_choices(text, question, choices):
    assert benchmarks.split_inline_choices(text) == (question, choices)


def test_format_question_without_choices_is_the_question():
    assert benchmarks.format_question({"question": "How many?", "choices": []}) == "How many?"


@pytest.mark.parametrize("fn", ["detect_schema", "split_inline_choices", "format_question"])
def test_docstring_examples(doctest_examples, fn):
    assert doctest_examples(benchmarks, [fn]) > 0


def test_data_module_binds_each_top_level_name_once():
    # tasks/benchmarks.py has sections by different owners; a second `_LETTERS = ...` further down silently
    # rebinds the first for every function of the module (this happened once).
    import ast
    import collections
    bound = collections.Counter()
    for node in ast.parse(open(benchmarks.__file__, encoding="utf-8").read()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound[node.name] += 1
        elif isinstance(node, ast.Assign):
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert [name for name, count in bound.items() if count > 1] == []


def test_benchmarks_and_synthetic_data_share_one_schema(tmp_path):
    # Same features => datasets.concatenate_datasets can mix benchmark and synthetic rows.
    import datasets
    rows = [{"images": [{"bytes": png_bytes("RGB"), "path": None}], "problem": "p", "answer": "1"}]
    bench = benchmarks.load_benchmark(str(write_parquet(tmp_path / "g.parquet", rows)))
    synthetic = visualmath.make_slots(2, seed=0)
    assert bench.features == synthetic.features == benchmarks.UNIFIED_FEATURES
    assert len(datasets.concatenate_datasets([bench, synthetic])) == 3
