"""Where a release keeps each split: the files of one split of a local copy, found the way the hub finds them.

A benchmark copied to disk (a `huggingface-cli download` snapshot, or the authors' GitHub release) is read so
that `split=test` names the same rows offline as `datasets.load_dataset(hub_id, split="test")` does online.
The rules, tried in this order for a folder (the first one that finds any file decides every split):

    1. README.md front matter `configs:`   config_name -> data_files -> (split, path globs relative to the root);
                                           the hub's own rule, and it wins (MathVerse, DynaMath, MMMU-Pro need it)
    2. shards  <dir>/<split>-NNNNN-of-NNNNN*.<ext>        the hub's parquet export (Geometry3K, MathVista, We-Math)
    3. stems   <split>.parquet | .jsonl | .json at the root or in data/, the stem a plain word
                                           (GitHub releases: MathVista's data/testmini.json, MathVision's test.jsonl)
    4. keywords  a file or folder name holding train|training, validation|valid|dev|val, test|testing|eval|evaluation
                 between delimiters (- . _ space digit /), as datasets does: `testmini.json` is NOT `test`
    5. else every data file is one split, `train` (datasets' fallback: ViRL39K's 39Krelease.parquet)

Within a split, one copy per file stem: X.parquet is read, X.json / X.jsonl beside it are not (MathVerse ships
both: the parquet embeds the images, the json points into images.zip). Never read as rows: README.md, zips,
annot_*.json, source.json, query.json, dataset_info*.json (annotations and metadata, not rows).
A split name is matched exactly, never as a substring; one that matches nothing is an error naming the
splits that exist.

    find_split(root, split, config=None) -> (files, config)      the files of one split, in order
    folder_splits(root, config=None)     -> {split: files}        every split a folder holds
    read_rows(path)                      -> [(row dict, file, row index in file)]
    infer_split(path)                    -> the split a single file's name says it holds

References: datasets' data_files.py (DEFAULT_PATTERNS_SPLIT_IN_FILENAME / _SHARDED / ALL_FILES, KEYWORDS_IN_PATH) and
load.py (the README card's configs); EasyR1's `name@split` spelling (verl/utils/dataset.py).
Run: `python -m pytest -q tests/test_loaders.py -k layout`.
"""

import glob
import json
import os
import re

DATA_EXTENSIONS = (".parquet", ".jsonl", ".json")
# Files that sit beside the rows in real releases and are not rows (MathVista: annot_testmini.json per-pid
# annotations, source.json, query.json prompts; datasets' own bookkeeping files).
_NOT_ROWS = {"readme.md", "source.json", "query.json", "dataset_info.json", "dataset_infos.json",
             "dataset_dict.json", "state.json", "config.json"}
_SHARD = re.compile(r"(\w+(?:\.\w+)*)-\d{5}-of-\d{5}")           # "testmini-00000-of-00001-725687bf.parquet"
_PLAIN_STEM = re.compile(r"[A-Za-z]+(?:_[A-Za-z]+)*")               # "testmini", "testmini_text_only", "dataset"
_KEYWORDS = (("train", ("train", "training")), ("validation", ("validation", "valid", "dev", "val")),
             ("test", ("test", "testing", "eval", "evaluation")))
_DELIM = r"[-._ 0-9/]"
_KEYWORD = {split: re.compile(rf"(?:^|{_DELIM})(?:{'|'.join(words)})(?:{_DELIM}|$)", re.IGNORECASE)
            for split, words in _KEYWORDS}


def is_row_file(name):
    """Does a file of this name hold rows? (data extension, not one of the releases' metadata files)"""
    low = os.path.basename(name).lower()
    return low.endswith(DATA_EXTENSIONS) and low not in _NOT_ROWS and not low.startswith("annot_")


def _data_files(root):
    """Every row file under root (relative paths, sorted), images and zips left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files if is_row_file(f)]
    return sorted(found)


def _one_copy_per_stem(files):
    """X.parquet beats X.jsonl beats X.json for the same folder and stem; order kept."""
    rank = {ext: i for i, ext in enumerate(DATA_EXTENSIONS)}
    best = {}
    for f in files:
        stem, ext = os.path.splitext(f)
        if stem not in best or rank[ext.lower()] < rank[os.path.splitext(best[stem])[1].lower()]:
            best[stem] = f
    return [f for f in files if best[os.path.splitext(f)[0]] == f]


def readme_configs(root):
    """({config_name: {split: [glob, ...]}}, the config marked `default: true` or None) from README.md's YAML
    front matter; ({}, None) when it has none. datasets reads the default config when none is named.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "README.md"), "w").write(
    ...     "---\\nconfigs:\\n- config_name: testmini\\n  data_files:\\n  - split: testmini\\n    path: testmini.parquet\\n---\\n# card")
    >>> readme_configs(d)
    ({'testmini': {'testmini': ['testmini.parquet']}}, None)
    """
    path = os.path.join(root, "README.md")
    if not os.path.isfile(path):
        return {}, None
    text = open(path, encoding="utf-8", errors="replace").read()
    if not text.startswith("---"):
        return {}, None
    end = text.find("\n---", 3)
    import yaml  # transformers' own dependency; only cards need it
    try:
        card = yaml.safe_load(text[3:end if end > 0 else len(text)]) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: the card's YAML front matter does not parse ({str(err).splitlines()[0]})") from None
    configs, default = {}, None
    for entry in card.get("configs") or [] if isinstance(card, dict) else []:
        if not isinstance(entry, dict):
            continue
        name, files, splits = str(entry.get("config_name", "default")), entry.get("data_files"), {}
        # data_files: "glob" | [globs] (both mean split train) | [{split, path: glob | [globs]}]
        for item in files if isinstance(files, list) else [files] if files else []:
            if isinstance(item, dict):
                paths = item.get("path")
                splits.setdefault(str(item.get("split", "train")), []).extend(
                    paths if isinstance(paths, list) else [paths])
            else:
                splits.setdefault("train", []).append(item)
        configs[name] = splits
        default = name if entry.get("default") else default
    return configs, default


def _glob(root, pattern):
    """Files under root matching a data_files glob (fsspec style: ** crosses folders), rows only, sorted."""
    hits = glob.glob(os.path.join(glob.escape(root), pattern), recursive=True)
    if not hits and "*" not in pattern:  # a folder given as a path means its files
        hits = glob.glob(os.path.join(glob.escape(root), pattern, "**", "*"), recursive=True)
    return sorted(os.path.relpath(h, root) for h in hits if os.path.isfile(h) and is_row_file(h))


def _split_of_name(relpath):
    """The keyword split (train / validation / test) a relative path names, or None (rule 4)."""
    stem = os.path.splitext(relpath)[0]
    for split, pattern in _KEYWORD.items():
        if pattern.search(stem):
            return split
    return None


def folder_splits(root, config=None):
    """({split: [files relative to root]}, rule, default config) of a local folder, by the module docstring's rules.

    config: the README config to read (None: the only one, or the one holding the split asked for later --
    find_split decides). Raises ValueError when the folder has no row file.
    """
    configs, default = readme_configs(root)
    if configs:  # rule 1
        if config is not None and config not in configs:
            raise ValueError(f"{root}: config {config!r} is not in its README.md; configs: {', '.join(configs)}")
        chosen = {config: configs[config]} if config is not None else configs
        splits = {}
        for name, by_split in chosen.items():
            for split, patterns in by_split.items():
                files = [f for p in patterns if p for f in _glob(root, str(p))]
                splits[(name, split)] = _one_copy_per_stem(list(dict.fromkeys(files)))
        return splits, "README.md configs", default
    files = _data_files(root)
    if not files:
        raise ValueError(f"{root}: no .parquet/.jsonl/.json file of rows in this folder (nor below it)")
    shards = {}
    for f in files:  # rule 2
        m = _SHARD.match(os.path.basename(f))
        if m:
            shards.setdefault(m.group(1), []).append(f)
    if shards:
        return {s: _one_copy_per_stem(fs) for s, fs in shards.items()}, "shard names", None
    stems = {}
    for f in files:  # rule 3
        stem = os.path.splitext(os.path.basename(f))[0]
        if os.path.dirname(f) in ("", "data") and _PLAIN_STEM.fullmatch(stem):
            stems.setdefault(stem, []).append(f)
    if stems:
        return {s: _one_copy_per_stem(fs) for s, fs in stems.items()}, "file stems", None
    keywords = {}
    for f in files:  # rule 4
        split = _split_of_name(f)
        if split:
            keywords.setdefault(split, []).append(f)
    if keywords:
        return {s: _one_copy_per_stem(fs) for s, fs in keywords.items()}, "split keywords in file names", None
    return {"train": _one_copy_per_stem(files)}, "one split (datasets' fallback: train)", None  # rule 5


def describe_splits(splits):
    """'test (1 file), testmini (2 files)' -- the splits present, for error messages."""
    one_config = len({k[0] for k in splits if isinstance(k, tuple)}) <= 1

    def name(key):
        return key if isinstance(key, str) else key[1] if one_config else f"{key[1]} (config {key[0]!r})"
    return ", ".join(f"{name(k)} ({len(v)} file{'s' * (len(v) != 1)})" for k, v in splits.items())


def find_split(root, split, config=None):
    """(absolute file paths of `split`, config name or None) in a local folder; exact names only.

    A split that matches nothing, or a split held by several README configs with none chosen, is a
    ValueError that names what the folder holds and what to pass.
    """
    splits, rule, default = folder_splits(root, config)
    if split in splits:
        files = splits[split]
    else:
        holders = [k for k in splits if isinstance(k, tuple) and k[1] == split]
        holders = [k for k in holders if k[0] == default] or holders  # datasets reads the card's default config
        if len(holders) > 1:
            raise ValueError(f"{root}: split {split!r} is in several configs of its README.md "
                             f"({', '.join(repr(k[0]) for k in holders)}); pass the config to read")
        if not holders:
            raise ValueError(f"{root}: no split {split!r} (found by {rule}); splits present: {describe_splits(splits)}")
        config, files = holders[0][0], splits[holders[0]]
    if not files:
        raise ValueError(f"{root}: split {split!r} lists no row file that exists (README.md paths matched nothing)")
    return [os.path.join(root, f) for f in files], config


def split_names(root, config=None):
    """Names of the splits a folder holds (each once, in the folder's order)."""
    splits = folder_splits(root, config)[0]
    return list(dict.fromkeys(k if isinstance(k, str) else k[1] for k in splits))


def infer_split(path):
    """The split a single file's name says it holds: a shard prefix, a plain-word stem, a keyword, else train.

    >>> infer_split("data/testmini-00000-of-00001-725687bf.parquet"), infer_split("testmini.json")
    ('testmini', 'testmini')
    >>> infer_split("geo3k-test.parquet"), infer_split("39Krelease.parquet")
    ('test', 'train')
    """
    name = os.path.basename(path)
    m = _SHARD.match(name)
    if m:
        return m.group(1)
    stem = os.path.splitext(name)[0]
    if _PLAIN_STEM.fullmatch(stem):
        return stem
    return _split_of_name(name) or "train"


# --- reading rows -----------------------------------------------------------------------------------------

def read_rows(path):
    """[(row dict, path, index in file)] of one .parquet / .jsonl / .json file; a json dict {key: row} (MathVista,
    LogicVista GitHub releases) gives its values, {"data": [rows]} its list. Errors name the file and line."""
    low = path.lower()
    if low.endswith(".parquet"):
        import pyarrow.parquet  # ships with datasets; only parquet files need it
        try:
            rows = pyarrow.parquet.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{path}: not a readable parquet file ({type(err).__name__}: {str(err)[:200]})") from None
    elif low.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}: line {n + 1} is not valid JSON ({err})") from None
    elif low.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as fh:
                content = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(content, dict):  # {pid: row} (MathVista testmini.json, LogicVista dataset.json) or {"data": [...]}
            if isinstance(content.get("data"), list):
                content = content["data"]
            else:
                content = [dict(row, _key=key) if isinstance(row, dict) else row for key, row in content.items()]
        rows = content if isinstance(content, list) else [content]
    else:
        raise ValueError(f"{path}: unsupported file type; use .parquet, .json or .jsonl (or a hub name)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i} is a {type(row).__name__}, expected one JSON object (dict) per row")
    return [(row, path, i) for i, row in enumerate(rows)]
