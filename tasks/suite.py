"""The paper's benchmarks and their releases: which split each evaluates on, and one row conversion each.

The AT-RL paper reports nine evaluation benchmarks (MathVerse, DynaMath, MMK12, Geometry3K, MathVision, We-Math,
LogicVista, MMMU-Pro, MathVista) and trains on Geometry3K / ViRL39K / MMK12 style data. Each release has its own
columns; `convert_row(schema, row)` turns one raw row into the fields of the unified schema
(tasks/benchmarks.py), one visible branch per benchmark:

    row (the release's columns) -> {id, images [raw, all of them], question, answer, choices, precision, unit,
                                    question_type "multi_choice" | "free_form", answer_type, meta {...}}

`images` keeps every image reference the row has (tasks/benchmarks.py keeps the first: the pipeline is
single-image, and counts the rest as dropped); an empty list marks a text-only row (skipped and counted there).
`meta` keeps what the benchmark's own scorer needs (tasks/scorers.py): MathVerse's version, DynaMath's seed id,
We-Math's problem group and step key, LogicVista's skills, MathVision's and MMMU-Pro's option lists.

Where we choose (each at its branch below):
  1. Geometry3K: the problem alone, graded against the option text, as EasyR1 and verl prompt it
     (show_choices=True lists the four options, our prompt before #30).
  2. MathVerse Vision Only rows have an empty question: the prompt is the row's own query_cot (the benchmark's
     text), with no choices to parse; counted by its question_type.
  3. MathVision rows whose options are the letters A-E (picture options) show no option list (its GPT4V.py does so).
  4. MMMU-Pro `vision`: the question is an instruction to read the screenshot; options are kept only to map an
     option's text to its letter.
  5. An image-less row (ViRL39K's DeepScaleR rows, MathVerse's text-only config) is never invented an image.

Sources (columns as the hub cards and the GitHub releases show them): hiyouga/geometry3k, AI4Math/MathVista
(lupantech/MathVista), AI4Math/MathVerse (ZrrSkywalker/MathVerse), TIGER-Lab/ViRL39K, DynaMath/DynaMath_Sample,
FanqingM/MMK12, MathLLMs/MathVision (mathllm/MATH-V), We-Math/We-Math, lscpku/LogicVista, MMMU/MMMU_Pro.
Run: `python -m pytest -q tests/test_loaders.py tests/test_suite.py`.
"""

import ast
import math
import re
from typing import NamedTuple

from tasks import grading


class Benchmark(NamedTuple):
    name: str            # schema name and the sub-folder name under --data_root
    hub_id: str          # the hub dataset the suite reads when no local copy is given
    config: str          # README config (hub subset) the suite reads, "" = the only / default one
    eval_split: str      # the split papers report ("+" joins several); "" = none (training data only)
    train_split: str     # the split to train on; "" = an evaluation-only benchmark
    title: str           # the name in the results table


BENCHMARKS = (
    Benchmark("geometry3k", "hiyouga/geometry3k", "", "test", "train", "Geo3K"),
    Benchmark("mathvista", "AI4Math/MathVista", "", "testmini", "", "MathVista"),
    Benchmark("mathverse", "AI4Math/MathVerse", "testmini", "testmini", "", "MathVerse"),
    Benchmark("virl39k", "TIGER-Lab/ViRL39K", "", "", "train", "ViRL39K"),
    Benchmark("dynamath", "DynaMath/DynaMath_Sample", "", "+".join(f"sample_variant{i}" for i in range(1, 11)), "",
              "DynaMath"),
    Benchmark("mmk12", "FanqingM/MMK12", "", "test", "train", "MMK12"),
    Benchmark("mathvision", "MathLLMs/MathVision", "", "test", "", "MathVision"),
    Benchmark("wemath", "We-Math/We-Math", "", "testmini", "", "We-Math"),
    Benchmark("logicvista", "lscpku/LogicVista", "", "test", "", "LogicVista"),
    Benchmark("mmmu_pro", "MMMU/MMMU_Pro", "standard (10 options)", "test", "", "MMMU-Pro"),
)
SCHEMAS = tuple(b.name for b in BENCHMARKS)
# The paper's evaluation suite, in the paper's order.
PAPER_SUITE = ("mathverse", "dynamath", "mmk12", "geometry3k", "mathvision", "wemath", "logicvista", "mmmu_pro",
               "mathvista")
MMMU_VISION_QUESTION = "Read the multiple-choice question and its options in the image, then answer it."


def benchmark(name):
    """The Benchmark a schema name or hub id names (case-insensitive), or None.

    >>> benchmark("hiyouga/geometry3k").eval_split, benchmark("MathVista").name, benchmark("owner/other")
    ('test', 'mathvista', None)
    """
    low = (name or "").lower()
    return next((b for b in BENCHMARKS if low in (b.name, b.hub_id.lower(), b.title.lower())), None)


def detect_schema(columns):
    """Which benchmark's columns these are (the most specific test first; DynaMath and MathVision both carry
    MathVista's decoded_image, Geometry3K and DynaMath both a ground_truth).

    >>> detect_schema(["pid", "question", "image", "answer"]), detect_schema(["images", "problem", "answer"])
    ('mathvista', 'geometry3k')
    >>> detect_schema(["id", "question", "options", "image", "decoded_image", "answer", "level", "subject"])
    'mathvision'
    """
    c = set(columns)
    if c & {"problem_version", "query_wo", "query_cot"}:
        return "mathverse"
    if "pid" in c:
        return "mathvista"
    if {"ground_truth", "knowledge_level"} <= c:
        return "dynamath"
    if {"options", "level", "subject"} <= c:
        return "mathvision"
    if "knowledge concept" in c or {"option", "key"} <= c:
        return "wemath"
    if "skill" in c or "imagename" in c:
        return "logicvista"
    if "options" in c and ("image_1" in c or "image" in c):
        return "mmmu_pro"
    if "qid" in c or any(k.startswith("PassRate_") for k in c):
        return "virl39k"
    if "problem" in c:
        return "geometry3k"
    if {"subject", "question", "answer", "image"} <= c:
        return "mmk12"
    raise ValueError(f"cannot tell the benchmark from the columns {sorted(c)}; pass schema= one of {', '.join(SCHEMAS)}")


# --- options written inside a question ------------------------------------------------------------------

# One option per line: "A. 3", "B: 4", "(C) 5", "D) 6", "A、x" (MMK12), "B.2.3." (no space).
_OPTION_LINE = re.compile(r"\(?([A-Z])[.:)、．]\)?\s*(.*)")
# An option marker inside one line: "(A)" anywhere, or "A." / "A:" / "A)" / "A、" after a space or a colon.
_OPTION_MARK = re.compile(r"\(([A-Z])\)\s*|(?:^|(?<=[\s:：]))([A-Z])[.:)、．]\s*")
_CHOICES_WORD = re.compile(r"(?:choices|options|choice|option)\s*[:：]?\s*$", re.IGNORECASE)


def _one_line_options(line):
    """Options written on one line that starts with them: "(A) Yes (B) No", "A. 2 B. 4 C. 6 D. 8" -> list, or []."""
    marks = list(_OPTION_MARK.finditer(line))
    if len(marks) < 2 or marks[0].start() != 0:
        return []
    letters = [m.group(1) or m.group(2) for m in marks]
    if letters != list(grading.CHOICE_LETTERS[:len(letters)]):
        return []
    texts = [line[m.end():(marks[k + 1].start() if k + 1 < len(marks) else len(line))].strip()
             for k, m in enumerate(marks)]
    return texts if all(texts) else []


def split_inline_choices(text):
    """Split options written inside a question off it: (question, [option texts]).

    One option per line after the question (optionally under a "Choices:" line), or all on the last line,
    after "Choices:" or alone on it (DynaMath: "... Choices: (A) Yes (B) No"; ViRL39K: "A. 2 B. 4 C. 6 D. 8").
    Letters must run A, B, C, ... and there must be two or more; anything else leaves the text untouched.
    >>> split_inline_choices("Find x.\\nChoices:\\nA:3\\nB: 4.5")
    ('Find x.', ['3', '4.5'])
    >>> split_inline_choices("Is it periodic? Choices: (A) Yes (B) No")
    ('Is it periodic?', ['Yes', 'No'])
    >>> split_inline_choices("Point A: (1,2). Point B: (3,4).")
    ('Point A: (1,2). Point B: (3,4).', [])
    """
    lines = text.rstrip().split("\n")
    options, k = [], len(lines)
    while k > 0:  # walk up from the last line collecting "A. text" / "A: text" / "(A) text" lines
        m = _OPTION_LINE.fullmatch(lines[k - 1].strip())
        if not m:
            break
        options.insert(0, (m.group(1), m.group(2).strip()))
        k -= 1
    if len(options) >= 2 and [letter for letter, _ in options] == list(grading.CHOICE_LETTERS[:len(options)]):
        head, found = lines[:k], [option for _, option in options]
    else:  # all on the last line: after "Choices:" in it, or the whole line
        last = lines[-1]
        cut = max(last.lower().rfind("choices:"), last.lower().rfind("options:"))
        before, after = (last[:cut], last[cut + 8:].strip()) if cut >= 0 else ("", last.strip())
        found = _one_line_options(after)
        if not found:
            return text, []
        head = lines[:-1] + ([before] if before.strip() else [])
    if head and _CHOICES_WORD.fullmatch(head[-1].strip()):
        head = head[:-1]
    return "\n".join(head).strip(), found


# --- one raw row -> the unified fields -----------------------------------------------------------------

def _present(row):
    return sorted(k for k, v in row.items() if v is not None)


def _text(row, names, what):
    """The first present, non-None field among `names` as a string, else a ValueError naming them."""
    for name in names:
        if row.get(name) is not None:
            return str(row[name])
    raise ValueError(f"field {' or '.join(repr(n) for n in names)} is missing or null ({what}); present fields: "
                     f"{_present(row)}")


def _gold(row, *names):
    """The gold answer as text; "" when absent or null (the row is then skipped and counted, not an error)."""
    return next((str(row[n]) for n in names if row.get(n) is not None), "")


def image_list(value):
    """Every image reference of a cell as a list; None, "", [] and [""] all mean "no image" (ViRL39K)."""
    if value is None:
        return []
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if v is not None and not (isinstance(v, str) and not v.strip())
            and not (isinstance(v, dict) and not (v.get("bytes") or v.get("path")))]


def _first_images(row, names):
    """Images of the first field among `names` that holds any, with its name (for messages)."""
    for name in names:
        found = image_list(row.get(name))
        if found:
            return found, name
    return [], names[0]


def _question_type(raw, choices, answer):
    """multi_choice / free_form from a release's spelling (MathVista multi_choice, MathVerse multi-choice)."""
    raw = str(raw or "").lower().replace("-", "_").replace(" ", "_")
    if raw in ("multi_choice", "multiple_choice", "free_form"):
        return "multi_choice" if raw != "free_form" else "free_form"
    single_letter = len(answer.strip("() ")) == 1 and answer.strip("() ").isupper()
    return "multi_choice" if choices or single_letter else "free_form"


def _precision(value):
    """MathVista's decimals: 1.0 -> 1; None / NaN -> None; anything else is an error."""
    try:
        return None if value is None or value != value else int(value)  # NaN != NaN
    except (TypeError, ValueError):
        raise ValueError(f"field 'precision' must be a whole number of decimals, got {value!r}") from None


def _rate(value):
    """A ViRL39K pass rate, or None when unlabelled (NaN, None or a negative sentinel)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or value < 0 else value


def _wemath_options(text):
    """We-Math's one-string options: "A. 300, 400;B. 400, 300; E. No correct answer" -> ["300, 400", ...]."""
    parts = re.split(r";\s*(?=[A-H]\.)", text.strip())
    return [re.sub(r"^[A-H]\.\s*", "", p.strip()).rstrip(";").strip().rstrip(".").strip() for p in parts if p.strip()]


def _options_list(value):
    """A list cell, or MMMU-Pro's Python-literal string "['2', '4']", as a list of strings."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"field 'options' is not a list literal: {value[:80]!r}") from None
    return [str(v) for v in value or []]


def convert_row(schema, row, split="", show_choices=False):
    """One raw row of `schema` -> the unified fields (see the module docstring). Raises ValueError naming the
    field when the row lacks what its benchmark always has."""
    meta, precision, unit, answer_type, ident = {}, None, "", "", None
    if schema == "geometry3k":
        # hiyouga/geometry3k: images, problem ("<image>..."), answer = option TEXT, optional id, choices, ground_truth
        question = _text(row, ("problem", "question"), "the question text").replace("<image>", "").strip()
        answer = _gold(row, "answer")
        options = [str(c) for c in row.get("choices") or []]
        choices = options if show_choices else []  # choice 1: peers prompt with the problem alone
        images, _ = _first_images(row, ("images", "image"))
        question_type = "multi_choice" if choices else "free_form"
        meta = {"options": options, "ground_truth": row.get("ground_truth")}
        ident = row.get("id")
    elif schema == "mathvista":
        # AI4Math/MathVista: pid, question, choices (None for free-form), answer = option TEXT, precision, unit
        question = _text(row, ("question",), "the question text")
        answer = _gold(row, "answer")
        choices = [str(c) for c in row.get("choices") or []]
        images, _ = _first_images(row, ("decoded_image", "image"))
        precision, unit = _precision(row.get("precision")), str(row.get("unit") or "")
        answer_type = str(row.get("answer_type") or "")
        question_type = _question_type(row.get("question_type"), choices, "")
        ident = row.get("pid")
    elif schema == "mathverse":
        # AI4Math/MathVerse: choices inside the question; Vision Only rows have question "" (choice 2)
        version = str(row.get("problem_version") or "")
        question = str(row.get("question") or "")
        answer = _gold(row, "answer")
        if question.strip():
            question, choices = split_inline_choices(question)
        else:
            question, choices = _text(row, ("query_cot", "query_wo"), "the prompt of a Vision Only row"), []
        images, _ = _first_images(row, ("image",))
        question_type = _question_type(row.get("question_type"), choices, answer)
        meta = {"version": version, "problem": str(row.get("problem_index") or "")}
        ident = row.get("sample_index")
    elif schema == "virl39k":
        # TIGER-Lab/ViRL39K: "<image>" placeholders, choices inside the question, answer "\boxed{...}"
        question, choices = split_inline_choices(_text(row, ("question",), "the question text").replace("<image>", "").strip())
        answer = _gold(row, "answer").strip()
        answer = grading.last_boxed(answer) or answer
        images, _ = _first_images(row, ("image", "images"))
        question_type = _question_type(None, choices, answer)
        meta = {"category": row.get("category"), "source": row.get("source"),
                "pass_rate_32b_trained": _rate(row.get("PassRate_32BTrained")),
                "pass_rate_7b_base": _rate(row.get("PassRate_7BBase"))}
        ident = row.get("qid")
    elif schema == "dynamath":
        # DynaMath/DynaMath_Sample: one split per variant; choices on one line "Choices: (A) .. (B) .."
        question, choices = split_inline_choices(_text(row, ("question",), "the question text"))
        answer = _gold(row, "ground_truth", "answer")
        answer_type = str(row.get("answer_type") or "")
        images, _ = _first_images(row, ("decoded_image", "image"))
        question_type = "multi_choice" if answer_type == "multiple choice" else "free_form"
        meta = {"qid": str(row.get("id", "")), "variant": split, "subject": row.get("subject")}
        ident = row.get("id")
    elif schema == "mmk12":
        # FanqingM/MMK12: options inline "A. ..." (test: letter gold), open answers (train)
        question, choices = split_inline_choices(_text(row, ("question",), "the question text"))
        answer = _gold(row, "answer")
        images, _ = _first_images(row, ("image", "images"))
        question_type = _question_type(None, choices, answer)
        meta = {"subject": row.get("subject")}
        ident = row.get("id")
    elif schema == "mathvision":
        # MathLLMs/MathVision: options [] or 5; letter options A-E are pictures: no list in the prompt (choice 3)
        question = _text(row, ("question",), "the question text")
        answer = _gold(row, "answer")
        options = [str(o) for o in row.get("options") or []]
        choices = [] if "".join(options) == "ABCDE" else options
        images, _ = _first_images(row, ("decoded_image", "image"))
        question_type = "multi_choice" if options else "free_form"
        meta = {"options": options, "level": row.get("level"), "subject": row.get("subject")}
        ident = row.get("id")
    elif schema == "wemath":
        # We-Math/We-Math: options in ONE string; image column `image_path`; ID groups a problem's steps
        question = _text(row, ("question",), "the question text")
        answer = _gold(row, "answer")
        choices = _wemath_options(str(row.get("option") or ""))
        images, _ = _first_images(row, ("image_path", "image"))
        question_type = "multi_choice"
        meta = {"group": str(row.get("ID", "")), "key": str(row.get("key", "")),
                "concept": row.get("knowledge concept")}
        ident = f"{row.get('ID')}/{row.get('key')}" if row.get("key") is not None else row.get("ID")
    elif schema == "logicvista":
        # lscpku/LogicVista (or the GitHub dataset.json with imagename): options are in the image
        question = str(row.get("question") or "").strip()
        answer = str(row.get("answer") or "")
        choices = []
        images, _ = _first_images(row, ("image",))
        if not images and row.get("imagename"):
            images = ["images/" + str(row["imagename"])]
        question_type = "multi_choice"
        meta = {"skill": list(row.get("skill") or [])}
        ident = row.get("id") or row.get("_key")
    elif schema == "mmmu_pro":
        # MMMU/MMMU_Pro: options a Python-literal string; standard: image_1..image_7; vision: one screenshot
        options = _options_list(row.get("options"))
        answer = _gold(row, "answer")
        images = [v for i in range(1, 8) for v in image_list(row.get(f"image_{i}"))] or image_list(row.get("image"))
        if "question" in row and row["question"] is not None:
            question, choices = str(row["question"]), options
        else:  # choice 4: the vision setting's question and options are in the image
            question, choices = MMMU_VISION_QUESTION, []
        question_type = "multi_choice"
        meta = {"options": options, "subject": row.get("subject")}
        ident = row.get("id")
    else:
        raise ValueError(f"schema={schema!r} is unknown; use one of {', '.join(SCHEMAS)}")
    return {"id": ident, "images": images, "question": question, "answer": answer.strip(), "choices": choices,
            "precision": precision, "unit": unit, "question_type": question_type, "answer_type": answer_type,
            "meta": meta}
