"""Data for AT-RL: benchmark loaders into one schema, so the RL loop never sees a dataset's own layout.

Everything the RL loop reads comes through one schema (UNIFIED_FEATURES): an image, a question, a gold
answer, optional choices, MathVista's precision/unit, and -- for the synthetic VisualMath task only
(tasks/visualmath.py) -- the ground-truth `perception` values (what must be read off the image) and a reference
response.

    load_benchmark(hub name | parquet/json/jsonl | folder) for Geometry3K, MathVista (testmini), MathVerse
    and ViRL39K -> the unified schema, with errors that name the row and the field
    format_question(row) -> the question as the model sees it, choices written as "A. ..." lines

Where we choose: multi-image rows keep their first image (the pipeline is single-image); the ViRL39K hub
layout (images in a separate zip) raises an error that asks for a local copy.
The rest of the data story: tasks/visualmath.py (the synthetic task), tasks/grading.py (answers -> rewards).

Run: `python -m pytest -q tests/test_loaders.py`.
"""

import io
import json
import os
import re

import datasets
import PIL.Image

from tasks import grading

# Every benchmark arrives in its own schema; the rest of the project sees only the unified one:
#   id: str, image: PIL.Image, question: str, answer: str, choices: list[str], perception: list[str],
#   response: str, precision: int | None, unit: str, source: str
# Schemas we read (column names from the dataset cards on the Hugging Face hub):
#   geometry3k  hiyouga/geometry3k: images (list of images), problem ("<image>..."), answer
#               (option text), optional id, choices, ground_truth (letter).
#   mathvista   AI4Math/MathVista (testmini): pid, question, image (relative path), decoded_image,
#               choices (None for free-form), answer (option TEXT for multi_choice), precision,
#               unit, question_type, answer_type, query. The GitHub release's testmini.json is a
#               dict {pid: row}; we accept that too.
#   mathverse   AI4Math/MathVerse (testmini): sample_index, problem_version, question (choices
#               written inside it), image, answer (a letter for multi-choice), question_type.
#   virl39k     TIGER-Lab/ViRL39K: qid, question ("<image>...", choices inside it), answer
#               ("\boxed{...}"), image (list of relative paths), category, source, PassRate_*.
# Images may be a PIL image, raw bytes, {"bytes", "path"} dicts (datasets' encoding), a path
# relative to the data file, or a list of these (we keep the first: the pipeline is single-image).
# NOTE: rows are validated as they are read, so a bad row fails here with its index and field
# instead of deep inside a rollout hours later.

UNIFIED_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "image": datasets.Image(),              # decoded lazily to PIL, in the file's own mode
    "question": datasets.Value("string"),   # without "<image>" placeholders and inline choices
    "answer": datasets.Value("string"),
    "choices": datasets.List(datasets.Value("string")),  # [] for free-form questions
    "perception": datasets.List(datasets.Value("string")),  # [] for benchmarks (synthetic only)
    "response": datasets.Value("string"),   # reference response, "" when none
    "precision": datasets.Value("int32"),   # decimals to round to (MathVista floats) or None
    "unit": datasets.Value("string"),
    "source": datasets.Value("string"),
})

# Columns whose presence identifies each schema, checked in this order (the most specific first).
_SCHEMA_MARKERS = (
    ("mathverse", ("sample_index", "problem_version", "query_cot")),
    ("mathvista", ("pid", "decoded_image", "answer_type")),
    ("virl39k", ("qid", "PassRate_32BTrained", "PassRate_7BUntrained")),
    ("geometry3k", ("problem",)),
)
# One option line of a question with inline choices: "A. 3", "B: 4", "(C) 5", "D) 6".
_OPTION_LINE = re.compile(r"\(?([A-Z])[.:)]\)?\s*(.*)")
# Hub split used when none is given.
_DEFAULT_SPLIT = {"geometry3k": "test", "mathvista": "testmini", "mathverse": "testmini",
                  "virl39k": "train"}


def detect_schema(columns):
    """Name of the benchmark schema these column names belong to.

    >>> detect_schema(["pid", "question", "image", "answer"]), detect_schema(["images", "problem", "answer"])
    ('mathvista', 'geometry3k')
    """
    columns = set(columns)
    for name, markers in _SCHEMA_MARKERS:
        if columns & set(markers):
            return name
    raise ValueError(
        f"cannot tell the benchmark schema from the columns {sorted(columns)}; expected one of "
        + "; ".join(f"{n} (any of {list(m)})" for n, m in _SCHEMA_MARKERS)
        + ". Pass schema='geometry3k'|'mathvista'|'mathverse'|'virl39k' explicitly.")


def split_inline_choices(text):
    """Split options written inside a question ("Choices:\\nA: 3\\nB: 4") off the question text.

    Options must be consecutive letters from A, one per line, after a "Choices:"/"Options:" line or
    as the question's last lines; anything else leaves the text untouched.
    >>> split_inline_choices("Find x.\\nChoices:\\nA:3\\nB: 4.5")
    ('Find x.', ['3', '4.5'])
    >>> split_inline_choices("How many? A is a point.")
    ('How many? A is a point.', [])
    """
    lines = text.rstrip().split("\n")
    options, k = [], len(lines)
    while k > 0:  # walk up from the last line collecting "A. text" / "A: text" / "(A) text" lines
        m = _OPTION_LINE.fullmatch(lines[k - 1].strip())
        if not m:
            break
        options.insert(0, (m.group(1), m.group(2).strip()))
        k -= 1
    if len(options) < 2 or [letter for letter, _ in options] != list(grading.CHOICE_LETTERS[:len(options)]):
        return text, []
    head = lines[:k]
    if head and head[-1].strip().lower().rstrip(":") in ("choices", "options", "choice", "option"):
        head = head[:-1]
    return "\n".join(head).strip(), [option for _, option in options]


def format_question(example):
    """The question as the model sees it: text, then one "A. option" line per choice.

    >>> format_question({"question": "Which is larger?", "choices": ["3", "4"]})
    'Which is larger?\\nChoices:\\nA. 3\\nB. 4'
    """
    question = example.get("question") or ""
    choices = example.get("choices") or []
    if not choices:
        return question
    return question + "\nChoices:\n" + "\n".join(f"{grading.CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices))


def _read_rows(path, split):
    """Raw rows (list of dicts) of a local parquet/json/jsonl file, or of the split's file(s) in a
    folder. Returns (rows, base_dir) where base_dir resolves relative image paths."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith((".parquet", ".json", ".jsonl")))
        if split:
            files = [f for f in files if split in f] or files
        if not files:
            raise ValueError(f"{path}: no .parquet/.json/.jsonl file in this folder")
        rows = []
        for f in files:
            rows += _read_rows(os.path.join(path, f), None)[0]
        return rows, path
    base = os.path.dirname(os.path.abspath(path))
    if path.endswith(".parquet"):
        import pyarrow.parquet  # ships with datasets
        return pyarrow.parquet.read_table(path).to_pylist(), base
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as fh:
            rows = []
            for n, line in enumerate(fh):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}: line {n + 1} is not valid JSON ({err})") from None
            return rows, base
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            content = json.load(fh)
        if isinstance(content, dict):  # MathVista's testmini.json: {pid: row}; or {"data": [rows]}
            content = content["data"] if isinstance(content.get("data"), list) else list(content.values())
        return content, base
    raise ValueError(f"{path}: unsupported file type; use .parquet, .json or .jsonl (or a hub name)")


def _field(row, index, names, what):
    """First present, non-None value among `names`, else a ValueError naming the row and field."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise ValueError(f"row {index}: field {' or '.join(repr(n) for n in names)} is missing or null "
                     f"({what}); present fields: {sorted(k for k, v in row.items() if v is not None)}. "
                     f"Fix the data file or pass the right schema=.")


def _image_value(value, index, field, base_dir):
    """One image reference -> something datasets.Image() encodes: PIL, {"bytes"} or {"path"}."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"row {index}: field {field!r} is an empty list of images")
        value = value[0]
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            PIL.Image.open(io.BytesIO(value))  # reads the header only
        except Exception as err:
            raise ValueError(f"row {index}: field {field!r} holds {len(value)} bytes that are not an "
                             f"image PIL can read ({type(err).__name__})") from None
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str) and value:
        path = value if os.path.isabs(value) else os.path.join(base_dir or "", value)
        if not os.path.isfile(path) and base_dir is None:
            # e.g. TIGER-Lab/ViRL39K: the parquet lists paths into a separate images.zip
            raise ValueError(f"row {index}: field {field!r} is a relative image path {value!r} but the "
                             f"rows came from the hub; download the dataset, unpack its images next to "
                             f"the data file and pass the local file path instead")
        if not os.path.isfile(path):
            raise ValueError(f"row {index}: image file {value!r} (field {field!r}) not found at {path}; "
                             f"relative paths are read from the data file's folder {base_dir}")
        try:
            with PIL.Image.open(path):
                pass
        except Exception as err:
            raise ValueError(f"row {index}: image file {path} (field {field!r}) is not an image PIL "
                             f"can read ({type(err).__name__})") from None
        return {"path": path, "bytes": None}
    raise ValueError(f"row {index}: field {field!r} has no usable image (got {type(value).__name__}); "
                     f"expected a path, bytes, a PIL image or a {{'bytes', 'path'}} dict")


def _normalize_row(row, index, schema, base_dir):
    """One raw benchmark row -> one unified example (validated)."""
    question_fields = ("problem", "question") if schema == "geometry3k" else ("question",)
    question = str(_field(row, index, question_fields, "the question text"))
    answer = _field(row, index, ("answer",), "the gold answer")
    if isinstance(answer, (list, tuple)):
        answer = answer[0] if len(answer) == 1 else ", ".join(map(str, answer))
    answer = str(answer).strip()
    if schema == "virl39k":
        answer = grading.last_boxed(answer) or answer  # ViRL39K golds are all "\boxed{...}"
    if not answer:
        raise ValueError(f"row {index}: field 'answer' is empty; every example needs a gold answer")
    choices = row.get("choices") or []
    if isinstance(choices, str):  # a JSON-encoded list in some csv/json exports
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            choices = [choices]
    choices = [str(c) for c in choices]
    # "<image>" placeholders mark where the image goes; our prompt places the image itself.
    question = question.replace("<image>", "").strip()
    if not choices and schema in ("mathverse", "virl39k"):
        question, choices = split_inline_choices(question)
    if schema == "mathvista":
        image_fields = ("decoded_image", "image")
    elif schema == "geometry3k":
        image_fields = ("images", "image")
    else:
        image_fields = ("image", "images")
    image_field = next((f for f in image_fields if row.get(f) not in (None, [], "")), image_fields[0])
    image = _image_value(_field(row, index, image_fields, "the image"), index, image_field, base_dir)
    precision = row.get("precision")
    try:
        precision = None if precision is None or precision != precision else int(precision)  # NaN
    except (TypeError, ValueError):
        raise ValueError(f"row {index}: field 'precision' must be a whole number of decimals, "
                         f"got {precision!r}") from None
    ident = next((row[k] for k in ("id", "pid", "qid", "sample_index") if row.get(k) is not None), index)
    return {
        "id": str(ident), "image": image, "question": question, "answer": answer, "choices": choices,
        "perception": [], "response": "", "precision": precision, "unit": str(row.get("unit") or ""),
        "source": schema,
    }


def load_benchmark(name_or_path, split=None, schema=None, limit=None):
    """A benchmark as a datasets.Dataset in the unified schema (UNIFIED_FEATURES).

    name_or_path: a local .parquet/.json/.jsonl file (or a folder of them; `split` picks the files
    whose name contains it) with images as bytes or paths relative to the file, or a hub dataset
    name (needs network: datasets.load_dataset). schema: geometry3k|mathvista|mathverse|virl39k,
    or None to detect it from the columns. limit: keep the first `limit` rows.
    Raises ValueError naming the row index and field when a row is missing something.
    """
    if schema is not None and schema not in _DEFAULT_SPLIT:
        raise ValueError(f"schema={schema!r} is unknown; use one of {sorted(_DEFAULT_SPLIT)} or None")
    if os.path.exists(name_or_path):
        rows, base_dir = _read_rows(name_or_path, split)
        rows = rows[:limit] if limit is not None else rows
    elif name_or_path.endswith((".parquet", ".json", ".jsonl")) or name_or_path.startswith((".", "/")):
        raise ValueError(f"{name_or_path}: file not found (a hub name looks like 'owner/name')")
    else:
        # Hub path (not exercised by the tests: no network here). Images come back undecoded
        # ({"bytes", "path"}) so that nothing is decoded twice.
        guess = schema or next((n for n in _DEFAULT_SPLIT if n in name_or_path.lower()), None)
        config = "testmini" if guess == "mathverse" else None  # MathVerse's hub configs
        split = split or _DEFAULT_SPLIT.get(guess)
        if split is None:
            raise ValueError(f"{name_or_path}: pass split= (cannot guess it for an unknown benchmark)")
        hub = datasets.load_dataset(name_or_path, config, split=split)
        if limit is not None:
            hub = hub.select(range(min(limit, len(hub))))
        for column, feature in hub.features.items():
            if isinstance(feature, datasets.Image):
                hub = hub.cast_column(column, datasets.Image(decode=False))
            elif isinstance(feature, (datasets.List, datasets.Sequence)) and isinstance(
                    getattr(feature, "feature", None), datasets.Image):
                hub = hub.cast_column(column, datasets.List(datasets.Image(decode=False)))
        rows, base_dir = list(hub), None
    if not rows:
        raise ValueError(f"{name_or_path}: no rows (split={split!r})")
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{name_or_path}: expected one JSON object (dict) per row")
    schema = schema or detect_schema(rows[0].keys())
    try:
        examples = [_normalize_row(row, i, schema, base_dir) for i, row in enumerate(rows)]
    except ValueError as err:  # say which data (and schema) the row index refers to
        raise ValueError(f"{name_or_path} (schema {schema}): {err}") from None
    columns = {key: [ex[key] for ex in examples] for key in UNIFIED_FEATURES}
    return datasets.Dataset.from_dict(columns, features=UNIFIED_FEATURES)
