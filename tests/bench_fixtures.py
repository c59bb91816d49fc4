"""Small copies of the real benchmark releases, in their own layouts, for the loader, grader, eval and train tests.

Each builder writes a folder the way the release ships it (hub snapshot or GitHub release: README.md configs,
data/<split>-NNNNN-of-NNNNN-<hash>.parquet shards, root-level parquet + json copies, images beside the rows, the
metadata files that are NOT rows) with 3-12 rows whose values are the awkward ones the real data has: duplicate
options, trailing spaces, NaN precision, golds with units and mojibake, text-only rows, multi-image rows, one-line
options, an empty row. Layouts and columns follow docs/benchmarks.md (and the hub cards / GitHub trees it cites).

    build_suite(root) -> {name: folder}   every layout below; root/<name> for the nine of --suite paper
Nothing here downloads anything. Images are tiny one-colour PNGs (conftest.png_bytes) in the modes PIL must
handle (RGB, L, RGBA, P); 56 x 28 px so that the tiny model sees 2 image tokens.
"""
import json
import os
import zipfile

import pyarrow
import pyarrow.parquet

from conftest import png_bytes

IMG = {"bytes": png_bytes("RGB", (56, 28), (200, 220, 255)), "path": None}


def img(mode="RGB"):
    return {"bytes": png_bytes(mode, (56, 28), 1 if mode == "P" else 0), "path": None}


def parquet(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)


def text(path, content):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))


def png(path, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png_bytes(mode, (56, 28), 0))


def card(configs):
    """A README.md whose YAML front matter has `configs:` {config: {split: glob}} (the hub's card format)."""
    lines = ["---", "license: mit", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    return "\n".join(lines + ["---", "# Dataset card", ""])


def geometry3k(root):
    """hiyouga/geometry3k: README configs -> data/{train,validation,test}-00000-of-00001.parquet."""
    text(f"{root}/README.md", card({"default": {s: f"data/{s}-*" for s in ("train", "validation", "test")}}))
    train = [
        {"images": [img("RGBA")], "problem": "<image>Find PT", "answer": "\\frac { 20 } { 3 }", "id": 101,
         "choices": ["6", "\\frac { 20 } { 3 }", "7", "22 / 3"], "ground_truth": "B"},
        {"images": [img("P")], "problem": "<image>Find x.", "answer": "3 \\sqrt 2", "id": 102,
         "choices": ["3", "3 \\sqrt 2", "6", "6 \\sqrt 2"], "ground_truth": "B"},
        {"images": [img()], "problem": "<image>Find y.", "answer": "13.0", "id": 103,
         "choices": ["4.6", "6.5", "13.0", "26.0"], "ground_truth": "C"},
        {"images": [img("L")], "problem": "<image>Find the perimeter.", "answer": "2 \\sqrt { 221 }", "id": 104,
         "choices": ["2 \\sqrt { 221 }", "4 \\sqrt { 221 }", "30", "60"], "ground_truth": "A"},
        {"images": [img()], "problem": "<image>Find m \\angle 2.", "answer": "56", "id": 105,
         "choices": ["34", "56", "64", "124"], "ground_truth": "B"},
    ]
    parquet(f"{root}/data/train-00000-of-00001.parquet", train)
    # an older revision's columns (images, problem, answer only): id / choices / ground_truth are optional
    parquet(f"{root}/data/validation-00000-of-00001.parquet",
            [{"images": [img()], "problem": "<image>Find x.", "answer": "3"},
             {"images": [img()], "problem": "<image>Find h.", "answer": "12"}])
    test = [
        {"images": [img()], "problem": "<image>Find x.", "answer": "48", "id": 1,
         "choices": ["24", "36", "48", "60"], "ground_truth": "C"},
        {"images": [img()], "problem": "<image>A square is inscribed in a circle of area 18$\\pi$ square units. "
                                       "Find the length of a side of the square.", "answer": "6", "id": 2,
         "choices": ["3", "3 \\sqrt 2", "6", "6 \\sqrt 2"], "ground_truth": "C"},
        {"images": [img()], "problem": "<image>Find the area.", "answer": "12 \\pi", "id": 3,
         "choices": ["6 \\pi", "12 \\pi", "18 \\pi", "24 \\pi"], "ground_truth": "B"},
        {"images": [img()], "problem": "<image>Find z.", "answer": "22 / 3", "id": 4,
         "choices": ["6", "7", "22 / 3", "8"], "ground_truth": "C"},
    ]
    parquet(f"{root}/data/test-00000-of-00001.parquet", test)
    return root


def _mathvista_row(pid, question, answer, choices=None, qtype="free_form", atype="integer", precision=None,
                   unit=None):
    return {"pid": pid, "question": question, "image": f"images/{pid}.jpg", "decoded_image": img(),
            "choices": choices, "unit": unit, "precision": float("nan") if precision is None else precision,
            "answer": answer, "question_type": qtype, "answer_type": atype,
            "metadata": {"category": "math-targeted-vqa", "context": "geometry diagram", "grade": "high school",
                         "img_height": 28, "img_width": 56, "language": "english", "skills": ["algebraic reasoning"],
                         "source": "Geometry3K", "split": "testmini", "task": "geometry problem solving"},
            "query": f"Hint: ...\nQuestion: {question}"}


MATHVISTA_TESTMINI = [
    _mathvista_row("5", "Find $m\\angle H$", "97", ["97", "102", "107", "122"], "multi_choice", "text"),
    _mathvista_row("740", "What percent of the stands are full?", "15", ["15", "100", "50", "50"], "multi_choice", "text"),
    _mathvista_row("781", "In $\\triangle CDF$, find $FE$.", "18", ["9", "12", "18", "18"], "multi_choice", "text"),
    _mathvista_row("237", "If the number of grasshoppers decreases, what will the population of spiders most "
                          "likely do?", "decrease", ["increase", "stay the same ", "decrease"], "multi_choice", "text"),
    _mathvista_row("20", "Is the sum of smallest two value is greater then then largest value?", "No", ["Yes", "No"],
                   "multi_choice", "text"),
    _mathvista_row("1", "When a spring does work on an object, ... by what distance $d$ is the spring\r\ncompressed?",
                   "1.2", atype="float", precision=1.0),
    _mathvista_row("108", "Find the value of the square in the figure.", "51.04", atype="float", precision=2.0),
    _mathvista_row("2", "what is the total volume of the measuring cup?", "1000", unit="g"),
    _mathvista_row("506", "Between which two years does the line graph saw its maximum peak?", "[2014, 2016]",
                   atype="list"),
]


def mathvista_hub(root):
    """AI4Math/MathVista snapshot: README configs -> data/testmini-*-<hash>.parquet, data/test-0000{0,1}-of-00002;
    annot_testmini.json / source.json (not rows), images.zip."""
    text(f"{root}/README.md", card({"default": {"testmini": "data/testmini-*", "test": "data/test-*"}}))
    parquet(f"{root}/data/testmini-00000-of-00001-725687bf7a18d64b.parquet", MATHVISTA_TESTMINI)
    for shard, pids in ((0, ("t1", "t2")), (1, ("t3", "t4"))):  # the test split withholds its answers: ""
        parquet(f"{root}/data/test-0000{shard}-of-00002-{'ab'[shard] * 4}.parquet",
                [_mathvista_row(p, "How many?", "") for p in pids])
    text(f"{root}/annot_testmini.json", {"5": {"solution": None}})
    text(f"{root}/source.json", {"Geometry3K": {"url": "https://lupantech.github.io/inter-gps/"}})
    zipfile.ZipFile(f"{root}/images.zip", "w").close()
    return root


def mathvista_github(root):
    """lupantech/MathVista on GitHub: data/testmini.json is a dict {pid: row} (no decoded_image), images beside it."""
    rows = {}
    for pid, unit, precision, answer, atype in (("1", None, 1, "1.2", "float"), ("2", "g", None, "1000", "integer"),
                                                ("3", "years", None, "12", "integer"), ("4", None, 2, "0.33", "float"),
                                                ("5", None, None, "97", "text")):
        row = _mathvista_row(pid, f"Question {pid}?", answer, ["97", "102"] if pid == "5" else None,
                             "multi_choice" if pid == "5" else "free_form", atype, precision, unit)
        row.pop("decoded_image")
        row.pop("query")
        row["image"] = f"images/{pid}.png"
        row["precision"] = precision  # int or null in the json
        rows[pid] = row
        png(f"{root}/data/images/{pid}.png", "RGB")
    text(f"{root}/data/testmini.json", rows)
    text(f"{root}/data/query.json", {pid: f"Hint: ... {pid}" for pid in rows})
    return root


MATHVERSE_CHOICES = "Choices:\nA:40°\nB:60°\nC:120°\nD:140°"
_MV_QUERY = {"multi-choice": "Please first conduct reasoning, and then answer the question and provide the correct "
                             "option letter, e.g., A, B, C, D, at the end.",
             "free-form": "Please first conduct reasoning, and then answer the question and provide the final value, "
                          "e.g., 1, 2.5, 300, at the end."}
_MV_VISION_ONLY = ("According to the question shown in the image, please first conduct reasoning, and then answer the "
                   "question and provide the correct option letter, e.g., A, B, C, D, at the end.")


def _mathverse_row(index, problem, version, question, answer, qtype, image=True, query=None):
    return {"sample_index": str(index), "problem_index": str(problem), "problem_version": version,
            "question": question, "image": img() if image else None, "answer": answer, "question_type": qtype,
            "metadata": {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"},
            "query_wo": query or f"Please directly answer the question.\nQuestion: {question}",
            "query_cot": query or f"{_MV_QUERY[qtype]}\nQuestion: {question}", "question_for_eval": question}


def mathverse(root):
    """AI4Math/MathVerse snapshot: testmini.{parquet,json} and testmini_text_only.{parquet,json} at the root (each
    split twice: images embedded / paths into images.zip), README configs naming the parquets."""
    text(f"{root}/README.md", card({"testmini": {"testmini": "testmini.parquet"},
                                    "testmini_text_only": {"testmini_text_only": "testmini_text_only.parquet"}}))
    stem = "As shown in the figure, angle A = 80.0, angle B = 60.0, DE parallel BC, then the size of angle CED is ()"
    rows = [
        _mathverse_row(1, 1, "Text Dominant", f"{stem}\n{MATHVERSE_CHOICES}", "D", "multi-choice"),
        _mathverse_row(2, 1, "Text Lite", f"Angle A = 80.0, angle B = 60.0, find angle CED.\n{MATHVERSE_CHOICES}",
                       "D", "multi-choice"),
        _mathverse_row(3, 1, "Vision Intensive", f"Find angle CED.\n{MATHVERSE_CHOICES}", "D", "multi-choice"),
        _mathverse_row(4, 1, "Vision Dominant", f"Find angle CED.\n{MATHVERSE_CHOICES}", "D", "multi-choice"),
        _mathverse_row(5, 1, "Vision Only", "", "D", "multi-choice", query=_MV_VISION_ONLY),
        _mathverse_row(6, 2, "Text Lite", "A ship sails from A to B. Find the bearing of B from A.",
                       "S 23.5 ^\\circ W", "free-form"),
        _mathverse_row(7, 3, "Text Lite", "Find the bearing of C from B.", "118掳T", "free-form"),
        _mathverse_row(8, 4, "Text Lite", "Find the area of the sector, correct to one decimal place.",
                       "Area $=113.1 \\mathrm{~cm}^{2}$", "free-form"),
        _mathverse_row(9, 5, "Text Lite", "Which graph is the function?\nChoices:\nA:f\nB:g\nC:h\nD:k", "(C)",
                       "multi-choice"),
        _mathverse_row(10, 6, "Text Lite", "Is the function even?\nChoices:\nA:True\nB:False", "False",
                       "multi-choice"),
    ]
    parquet(f"{root}/testmini.parquet", rows)
    as_json = [dict(r, image=f"images_version_1-4/image_{r['problem_index']}.png") for r in rows]
    text(f"{root}/testmini.json", as_json)
    text_only = [dict(_mathverse_row(11 + i, 7 + i, "Text Only", f"Text only question {i}?", str(i), "free-form"),
                      image="") for i in range(2)]
    parquet(f"{root}/testmini_text_only.parquet", text_only)
    text(f"{root}/testmini_text_only.json", text_only)
    zipfile.ZipFile(f"{root}/images.zip", "w").close()
    return root


def virl39k(root):
    """TIGER-Lab/ViRL39K: README without configs, 39Krelease.parquet, images/ unzipped (plus the zip itself)."""
    text(f"{root}/README.md", "---\nlicense: apache-2.0\n---\n# ViRL39K\n")
    for name, mode in (("q1", "RGB"), ("q2", "L"), ("q3", "RGBA"), ("q4a", "RGB"), ("q4b", "P"), ("q5", "RGB")):
        png(f"{root}/images/{name}.png", mode)
    with zipfile.ZipFile(f"{root}/images.zip", "w") as z:
        z.writestr("images/q1.png", b"not read: the unzipped images/ is")

    def row(qid, question, answer, image, source="Processed", p7=-1.0):
        return {"qid": qid, "question": question, "answer": answer, "image": image, "category": "Commonsense",
                "source": source, "PassRate_32BTrained": 0.5, "PassRate_7BBase": p7}
    rows = [
        row("q1", "<image>\nIs the number of flowers even or odd?\nChoices:\n(A) odd\n(B) even", "\\boxed{B}",
            ["images/q1.png"]),
        row("q2", "<image>\nFind the angle.", "\\boxed{17^\\circ}", ["images/q2.png"], p7=float("nan")),
        row("q3", "<image>\nWhat fraction is shaded?", "\\boxed{\\frac{3}{4}}", ["images/q3.png"], p7=0.25),
        row("q4", "<image>\n<image>\nHow many more apples are in the second picture?", "\\boxed{2}",
            ["images/q4a.png", "images/q4b.png"]),
        row("q5", "<image>\nWhich value is the area?\nA. 2 B. 4 C. 6 D. 8", "\\boxed{B}", ["images/q5.png"]),
        row("t1", "Let $a_n$ be a sequence with ... Find $a_{10}$.", "\\boxed{\\frac{3}{4}}", [], "DeepScaleR"),
        row("t2", "Find the sum of all primes below 10.", "\\boxed{17}", None, "DeepScaleR"),
        row("t3", "What is 2^10?", "\\boxed{1024}", [""], "DeepScaleR"),
    ]
    parquet(f"{root}/39Krelease.parquet", rows)
    return root


def dynamath(root, variants=10):
    """DynaMath/DynaMath_Sample: README configs sample_variant<k> -> data/sample<k>-* (sample1 must not read sample10)."""
    text(f"{root}/README.md", card({"default": {f"sample_variant{k}": f"data/sample{k}-*"
                                                for k in range(1, variants + 1)}}))
    for k in range(1, variants + 1):
        rows = [
            {"id": "1", "question": "What is the period of this function? Answer the question with a floating-point "
                                    "number.", "image": "images/1.png", "decoded_image": img(),
             "ground_truth": f"{2.0944 * k:.4f}", "answer_type": "float", "subject": "analytic geometry",
             "knowledge_level": "high school"},
            {"id": "2", "question": "Is this a periodic function? Choices: (A) Yes (B) No", "image": "images/2.png",
             "decoded_image": img(), "ground_truth": "AB"[k % 2], "answer_type": "multiple choice",
             "subject": "graph theory", "knowledge_level": "undergraduate"},
            {"id": "3", "question": "What time is shown? Please answer in the form like __:__.",
             "image": "images/3.png", "decoded_image": img(), "ground_truth": f"{k % 12}:0", "answer_type": "text",
             "subject": "arithmetic", "knowledge_level": "elementary school"},
            {"id": "4", "question": "What is the equation of the horizontal line?", "image": "images/4.png",
             "decoded_image": img(), "ground_truth": f"y = -{k}", "answer_type": "text", "subject": "algebra",
             "knowledge_level": "high school"},
        ]
        parquet(f"{root}/data/sample{k}-00000-of-00001.parquet", rows)
    return root


def mmk12(root):
    """FanqingM/MMK12: data/{train,test}-00000-of-00001.parquet, no README; options inline in the question."""
    parquet(f"{root}/data/train-00000-of-00001.parquet", [
        {"id": "k1", "subject": "math", "question": "Compute the value.", "image": img(), "answer": "$$32$$"},
        {"id": "k2", "subject": "math", "question": "Find angle B.", "image": img(), "answer": "30°"},
        {"id": "k3", "subject": "physics", "question": "Find the angle of refraction.", "image": img(),
         "answer": "25°."}])
    parquet(f"{root}/data/test-00000-of-00001.parquet", [
        {"id": "t1", "subject": "math", "question": "Which is the graph of y = x^2?\nA. I\nB. II\nC. III\nD. IV",
         "image": img(), "answer": "B"},
        {"id": "t2", "subject": "chemistry", "question": "下列说法正确的是\nA、甲\nB、乙\nC、丙\nD、丁", "image": img(),
         "answer": "C"},
        {"id": "t3", "subject": "physics", "question": "The current is\nA.1.2 A\nB.2.3.\nC.3.4 A\nD.4.5 A",
         "image": img(), "answer": "B"},
        {"id": "t4", "subject": "biology", "question": "Which organ is shown?\nA. heart\nB. lung\nC. liver\nD. kidney",
         "image": img(), "answer": "A"}])
    return root


def mathvision(root):
    """MathLLMs/MathVision: README configs -> data/test-*-<hash>.parquet and data/testmini-*-<hash>.parquet."""
    text(f"{root}/README.md", card({"default": {"test": "data/test-*", "testmini": "data/testmini-*"}}))

    def row(i, question, options, answer, level=2, subject="metric geometry - angle"):
        return {"id": str(i), "question": question, "options": options, "image": f"images/{i}.jpg",
                "decoded_image": img(), "answer": answer, "solution": None, "level": level, "subject": subject}
    test = [
        row(1, "Which figure can be cut out of the net?", ["A", "B", "C", "D", "E"], "D"),
        row(2, "Which three symbols fill the gaps?", ["$\\Delta, \\square, \\bullet$", "$\\Delta, \\bullet, \\square$",
                                                      "$\\square, \\Delta, \\bullet$", "$\\bullet, \\Delta, \\square$",
                                                      "$\\bullet, \\square, \\Delta$"], "B"),
        row(3, "What is the length of the diagonal?", [], "2\\sqrt{3}", level=3),
        row(4, "Which balloon is the tallest? (answer with its letter)", [], "C"),
        row(5, "<image1> The cube in <image2> is turned; which face is on top?", ["red", "blue", "green", "Yellow",
                                                                                  "This cannot be worked out for certain."],
            "C", level=4, subject="descriptive geometry"),
    ]
    parquet(f"{root}/data/test-00000-of-00001-3532b8d3f1b4047a.parquet", test)
    parquet(f"{root}/data/testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet", test[:2])
    zipfile.ZipFile(f"{root}/images.zip", "w").close()
    return root


def wemath(root):
    """We-Math/We-Math: data/testmini-00000-of-00001-<hash>.parquet; image column `image_path`; options one string."""
    def row(ident, key, question, option, answer):
        return {"ID": ident, "split": "testmini", "knowledge concept": "Area of a circle", "question": question,
                "option": option, "answer": answer, "image_path": img(), "key": key, "question number": 1,
                "knowledge concept description": "..."}
    rows = [
        row("1", "2steps_1", "Find the radius.", "A. 3;B. 4;C. 5;D. 6; E. No correct answer", "B"),
        row("1", "2steps_2", "Find the area for radius 4.", "A. 15π;B. 10π;C. 16π; D. No correct answer", "C"),
        row("1", "2steps_multi", "Find the area.", "A. 300, 400;B. 400, 300;C. 3000, 4000;D. 4000, 3000; "
                                                   "E. No correct answer", "C"),
        row("2", "2steps_1", "Which point is the centre?", "A. F;    B. D;    C. B;    D. I; E. No correct answer", "A"),
        row("2", "2steps_2", "Find the diameter.", "A. 3, 5, 4; B. 3, 50, 40; C. 300, 50, 40; D. 30, 50, 40.; "
                                                   "E. No correct answer", "D"),
        row("2", "2steps_multi", "Find the perimeter.", "A. 1;B. 2;C. 3;D. 4; E. No correct answer", "E"),
        row("3", "1step", "How many circles?", "A. 1;B. 2;C. 3;D. 4", "A"),
    ]
    parquet(f"{root}/data/testmini-00000-of-00001-adbfe22dcd3558e6.parquet", rows)
    return root


def _logicvista_row(ident, question, answer, skill):
    return {"id": ident, "question": question, "answer": answer, "reasoning": "...", "image": img(), "skill": skill,
            "broad_capability": "diagram", "specific_capability": "puzzles", "imagesource": "web",
            "sourcelink": "https://example.org", "liscenced": "yes"}


def logicvista(root):
    """lscpku/LogicVista: data/test-00000-of-00001.parquet; golds are letters (some several), a digit, one empty row."""
    parquet(f"{root}/data/test-00000-of-00001.parquet", [
        _logicvista_row("v1_0", "Which shape comes next? Select from A-E.", "C", ["inductive"]),
        _logicvista_row("v1_1", "Which two figures are identical? Select from A-E.", "A, C", ["spatial"]),
        _logicvista_row("v1_2", "Which two statements are true? Select from A-D.", "B, D", ["deductive"]),
        _logicvista_row("v1_3", "Which gear turns fastest? Select from A-I.", "G", ["mechanical"]),
        _logicvista_row("v1_20", "How many triangles? Select from 1-5.", "3", ["numerical"]),
        _logicvista_row("v1_382", "", "", ["numerical"]),
    ])
    return root


def logicvista_github(root):
    """Yijia-Xiao/LogicVista on GitHub: data/dataset.json is {"v1_0": {...imagename...}}, images in data/images/."""
    rows = {}
    for ident, answer in (("v1_0", "C"), ("v1_1", "A, C")):
        row = _logicvista_row(ident, f"Question {ident}? Select from A-E.", answer, ["inductive"])
        row.pop("image")
        row.pop("id")
        row["imagename"] = f"{ident}.png"
        rows[ident] = row
        png(f"{root}/data/images/{ident}.png", "RGB")
    text(f"{root}/data/dataset.json", rows)
    return root


def mmmu_pro(root):
    """MMMU/MMMU_Pro: README configs -> "standard (10 options)/test-*" and "vision/test-*" (folder names with spaces)."""
    text(f"{root}/README.md", card({"standard (10 options)": {"test": "standard (10 options)/test-*"},
                                    "vision": {"test": "vision/test-*"}}))
    options = str([str(x) for x in range(2, 21, 2)])  # a Python literal, as the release stores it
    parquet(f"{root}/vision/test-00000-of-00001.parquet", [
        {"id": f"test_Math_{i}", "image": img(), "options": options, "answer": "B", "subject": "Math"}
        for i in range(3)])
    standard = [{"id": f"test_Math_{i}", "question": f"<image 1> What is x? ({i})", "options": options,
                 "explanation": "", "image_1": img(), "image_2": None, "img_type": "['Diagrams']", "answer": "B",
                 "topic_difficulty": "Easy", "subject": "Math"} for i in range(2)]
    standard.append({"id": "test_Art_7", "question": "<image 1> Which painting is by the same artist?",
                     "options": str(["<image 2>", "Monet", "Manet", "Degas", "Renoir", "Cezanne", "Pissarro", "Sisley",
                                     "Morisot", "Cassatt"]),
                     "explanation": "", "image_1": img(), "image_2": img("L"), "img_type": "['Paintings']",
                     "answer": "A", "topic_difficulty": "Hard", "subject": "Art"})
    parquet(f"{root}/standard (10 options)/test-00000-of-00001.parquet", standard)
    return root


def build_suite(root):
    """Every layout under root: the nine of the paper's suite as root/<name> (eval.py --suite paper --data_root
    root), plus virl39k, mathvista_github and logicvista_github. Returns {name: folder}."""
    builders = {"geometry3k": geometry3k, "mathvista": mathvista_hub, "mathverse": mathverse, "dynamath": dynamath,
                "mmk12": mmk12, "mathvision": mathvision, "wemath": wemath, "logicvista": logicvista,
                "mmmu_pro": mmmu_pro, "virl39k": virl39k, "mathvista_github": mathvista_github,
                "logicvista_github": logicvista_github}
    return {name: build(os.path.join(str(root), name)) for name, build in builders.items()}
