"""Each benchmark's own scoring rule, transcribed: would the benchmark's scorer count this extracted answer right?

tasks/grading.py is one benchmark-agnostic rule (the RL reward); published numbers come from each benchmark's own
scorer. This file restates those scorers in our words and code, applied to the answer our extractor read from the
response (grading.extract_answer), so eval.py can report both side by side:

    score(row, extracted) -> bool            one branch per benchmark (row["source"]), never raises
    group_metrics(source, metas, verdicts)   DynaMath's worst case, We-Math's four dimensions, MathVerse by version

    MathVista   evaluation/calculate_score.py normalize_extracted_answer: a letter (or "(X)") names its option, any
                other text goes to the option nearest by Levenshtein distance; integers truncate (int(float(x))),
                floats round to `precision` (Python's round), lists compare as written; then string equality
    MathVerse   a GPT judge ("completely matches"; 0.5m = 50cm) -- approximated: option letters, or the option's text;
                free-form by value within half a unit of the gold's last decimal, else the canonical text
    DynaMath    VLMEvalKit dynamath.py: float |pred - gold| <= 0.001 (a trailing π multiplies); one choice letter,
                else the gold letter among the first 3 characters; text: pred is a substring of the gold
    MathVision  evaluation/evaluate.py + utils.py: \\boxed / "the answer is" cuts, find_math_answer's cleaning, then
                equal text, or equal values rounded to 2 decimals, against the letter or the option's text
    We-Math     evaluation/accuracy.py: the first character after the last "Answer" (without > < : .), A-H
    LogicVista  VLMEvalKit logicvista.py: the letters chosen, sorted and lower-cased, equal the gold's
    MMMU-Pro    mmmu-pro/evaluate.py parse_multi_choice_response: after the last "Answer:", a unique option letter;
                else "(X)", "X ", "X." candidates, else option text (responses > 5 words), the last one wins
    MMK12       a GPT-4o judge of the final result -- approximated by grading.is_correct with the options
    Geometry3K, ViRL39K   mathruler grade_answer (EasyR1 / verl / VPPO / PAPO): canonical text, else exact value;
                two fractions only as written, an integer gold never matches a non-integer answer

Where we depart (each visible in its branch):
  1. The benchmarks that extract with a GPT model (MathVista, MathVerse, MMK12, LogicVista) get our rule-based
     extraction instead; MathVista's branch first reduces "x = 5" and a trailing unit equal to the row's unit, as
     the extractor would.
  2. No random choice: MMMU-Pro guesses a random letter when it parses none; we count that wrong (deterministic).
  3. An empty extraction is wrong everywhere (DynaMath's substring rule would count "" right).
  4. We-Math's score divides by the problems present (525 in the full testmini) so a subset scores sensibly.
Run: `python -m pytest -q tests/test_grading.py -k scorer`.
"""

import json
import math
import re

from tasks import grading

LETTERS = "ABCDEFGHIJ"


def meta_of(row):
    """The row's meta column as a dict ("" or absent -> {})."""
    meta = row.get("meta") or {}
    return json.loads(meta) if isinstance(meta, str) else meta


def levenshtein(a, b, cap=2000):
    """Edit distance (insert, delete, substitute = 1); strings are cut to `cap` characters to bound the work.

    >>> levenshtein("4π cm", "4πcm"), levenshtein("kitten", "sitting")
    (1, 3)
    """
    a, b = a[:cap], b[:cap]
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


# --- MathVista -------------------------------------------------------------------------------------------------

def mathvista_normalize(extraction, choices, question_type, answer_type, precision):
    """MathVista's normalize_extracted_answer, restated: the prediction string it compares with the gold, or None."""
    if question_type == "multi_choice":
        extraction = str(extraction).strip()
        if not extraction:
            return None
        paren = re.search(r"\(([a-zA-Z])\)", extraction)
        if paren:
            extraction = paren.group(1).upper()
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in letters:
            return choices[letters.index(extraction)]
        distances = [levenshtein(extraction, c) for c in choices]
        return choices[distances.index(min(distances))] if choices else None
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))      # truncates toward zero: "5.7" -> "5"
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))
    except (TypeError, ValueError, OverflowError):
        return None
    return str(extraction)                          # list (and text): as written


def score_mathvista(pred, row):
    text = str(pred).strip()
    name, eq, value = text.rpartition("=")
    if eq and value.strip() and re.fullmatch(r"[A-Za-z\\∠][\w\\∠{} ]{0,30}", name.strip()):
        text = value.strip()                        # departure 1: "x = 5" -> "5"
    unit = row.get("unit") or ""
    if unit and text.endswith(unit):
        text = text[: -len(unit)].strip()           # departure 1: "12 years" with unit "years"
    if row.get("question_type") == "multi_choice":
        m = re.match(r"([A-Z])[.):](?:\s|$)", text)
        text = m.group(1) if m else text            # departure 1: "B." / "B)" / "B:" name option B
    precision = row.get("precision")
    prediction = mathvista_normalize(text, row.get("choices") or [], row.get("question_type"),
                                     row.get("answer_type"), precision if precision is not None else 0)
    return prediction is not None and prediction == row["answer"]


# --- MathVerse ---------------------------------------------------------------------------------------------------

def _within_half_unit(pred, gold):
    """By value: a gold with decimals accepts anything that rounds to it (50.27 takes 50.268, not 50.3); an integer or
    symbolic gold takes its exact value, or a decimal approximation with 2+ decimals (grading.is_correct's rule)."""
    p, g = grading.canonical(pred), grading.canonical(gold)
    pv, gv = grading.arithmetic_value(p), grading.arithmetic_value(g)
    if pv is None or gv is None:
        return False
    places = grading.decimals(g)
    if places:
        return abs(pv - gv) <= 0.5 * 10.0 ** -places + 1e-12
    return grading.is_correct(p, g)


def score_mathverse(pred, row):
    gold = row["answer"].strip()
    if row.get("question_type") == "multi_choice":
        letter = gold.strip("() ")
        if len(letter) == 1 and letter.isalpha():
            said = grading.answer_letter(str(pred))
            if said is None and row.get("choices"):
                idx = grading.option_index(str(pred), row["choices"])
                said = LETTERS[idx] if idx is not None and idx < len(LETTERS) else None
            return said is not None and said.upper() == letter.upper()
        return grading.canonical(pred) == grading.canonical(gold)   # "False", "(C)"-less text golds
    if _within_half_unit(str(pred), gold):
        return True
    return grading.canonical(pred) == grading.canonical(gold)


# --- DynaMath ----------------------------------------------------------------------------------------------------

def score_dynamath(pred, row):
    gold, kind, pred = row["answer"], row.get("answer_type") or "text", str(pred).strip()
    if kind == "float":
        head = pred if pred.isdigit() else pred.split(" ")[0]
        try:
            value = float(head.split("π")[0]) * math.pi if "π" in head else float(head)
            return abs(value - float(gold)) <= 0.001
        except ValueError:
            return False
    if kind == "multiple choice":
        if len(pred) == 1:
            return pred.upper() == gold
        named = [c for c in "ABCDE" if c in pred.upper()]
        if len(named) == 1:
            return named[0] == gold
        return gold in pred[:3].upper()             # unparsed: the gold letter opens the answer
    return pred.lower() in gold.lower()             # text (and every other type): a substring of the gold


# --- MathVision ---------------------------------------------------------------------------------------------------

def _mathvision_strip(s):
    """utils._strip_string: the MATH normaliser's steps, in order."""
    for a, b in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""),
                 ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", "")):
        s = s.replace(a, b)
    s = s.split("\\text{ ")[0].replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = "0" + s if s.startswith(".") else s
    s = s.split("=")[-1] if s.count("=") == 1 else s
    s = s.split("\\approx")[-1] if s.count("\\approx") == 1 else s
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s).replace(" ", "")
    s = "\\frac{1}{2}" if s == "0.5" else s
    m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def mathvision_answer(text):
    """evaluate.py's cuts and utils.find_math_answer's cleaning: the model answer MathVision compares."""
    s = str(text).strip()
    for c in "ABCDE":
        if s.endswith((f" {c}.", f" ({c}).")) or s.startswith((f"{c}\n", f"({c})\n", f"({c}) {c}\n")):
            s = c
    tail = s.split("is ")[-1].rstrip(".")
    if re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", tail):
        s = tail
    if "oxed{" not in s:
        for flag in ("the final answer is", "the answer is", "the correct answer is", "the answer should be"):
            for spelled in (flag, flag.replace("the", "The")):
                if spelled in s:
                    s = s.split(spelled)[-1].strip().split("\n")[0].split(". ")[0]
    elif s.count("oxed{") > 1:
        s = "\\boxed{" + s.split("oxed{")[-1]
    s = s.lower().replace("{}", "")
    boxed = re.findall(r"oxed\{(.*)\}", s, flags=re.S)
    s = boxed[-1] if boxed else s
    if "}" in s and ("{" not in s or s.find("}") < s.find("{")):
        s = s.split("}")[0]
    s = s.split("=")[-1].split("\\approx")[-1]
    for a, b in ((" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""),
                 ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""),
                 ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""), ("{units}", ""), ("units", ""),
                 ("{km}", ""), ("km", "")):
        s = s.replace(a, b)
    s = _mathvision_strip(s)
    for c in "abcde":
        s = s.replace(f"({c})", c).replace(f"{{{c}}}", c)
    return s.rstrip(".").lstrip(":").strip()


def _mathvision_equal(a, b):
    """utils.is_equal: equal lower-cased text, else equal values rounded to 2 decimals (our safe evaluator stands
    in for latex2sympy + eval)."""
    a, b = a.lower().strip(), b.lower().strip()
    if not a.replace(" ", "") or not b.replace(" ", ""):
        return False
    if a == b:
        return True
    va, vb = (grading.arithmetic_value(grading.canonical(x)) for x in (a, b))
    return va is not None and vb is not None and round(va, 2) == round(vb, 2)


def score_mathvision(pred, row):
    gold, options = row["answer"], meta_of(row).get("options") or []
    value = options[ord(gold) - 65] if options and len(gold) == 1 and 0 <= ord(gold) - 65 < len(options) else ""
    answer = mathvision_answer(pred)
    return _mathvision_equal(gold, answer) or _mathvision_equal(value, answer)


# --- We-Math, LogicVista, MMMU-Pro ----------------------------------------------------------------------------------

def score_wemath(pred, row):
    tail = re.sub(r"[><:.]", "", str(pred).split("Answer")[-1].strip()).strip()
    return bool(tail) and tail[0] in "ABCDEFGH" and tail[0] == row["answer"].strip()


def score_logicvista(pred, row):
    gold = "".join(sorted(x.strip().lower() for x in row["answer"].split(", ")))
    text = str(pred).strip().rstrip(".")
    if re.fullmatch(r"\(?[A-I]\)?|[A-I](?:\s{0,3}(?:,|and|&)?\s{0,3}[A-I]){1,8}|\d", text):
        chosen = re.findall(r"[A-I\d]", text)
    else:
        chosen = [grading.answer_letter(text)] if grading.answer_letter(text) else []
    return "".join(sorted(c.lower() for c in chosen)) == gold


def mmmu_parse(response, options):
    """parse_multi_choice_response without the random guess: the letter the response names, or None (departure 2)."""
    letters = list(LETTERS[:len(options)])
    last = response.rfind("Answer:")
    if last != -1:
        named = [c for c in letters if c in response[last + len("Answer:"):].strip()]
        if len(named) == 1:
            return named[0]
    for ch in ",.!?;:'":
        response = response.strip(ch)
    response = f" {response} "
    candidates, bracketed, by_index = [c for c in letters if f"({c})" in response], True, True
    if not candidates:
        bracketed = False
        candidates = [c for c in letters if f"{c} " in response] or [c for c in letters if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        candidates, by_index = [c for c, o in zip(letters, options) if o.lower() in response.lower()], False
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    if by_index:  # several: the one named last
        where = [response.rfind(f"({c})" if bracketed else f" {c} ") for c in candidates]
    else:
        where = [response.lower().rfind(options[letters.index(c)].lower()) for c in candidates]
    return candidates[where.index(max(where))]


def score_mmmu_pro(pred, row):
    return mmmu_parse(str(pred), meta_of(row).get("options") or row.get("choices") or []) == row["answer"].strip()


# --- mathruler (Geometry3K, ViRL39K as EasyR1 / verl / VPPO grade them) ---------------------------------------------

def _is_integer(text):
    value = grading.arithmetic_value(text)
    return value is not None and abs(value - round(value)) < 1e-7


def score_mathruler(pred, row):
    p, g = grading.canonical(pred), grading.canonical(row["answer"])
    if p == g:
        return True
    gf, pf = (re.fullmatch(r"\(?(-?\d+)\)?/\(?(\d+)\)?", x) for x in (g, p))
    if gf and pf:                                   # two fractions: as written (6/8 is not 3/4: unreduced)
        return gf.groups() == pf.groups()
    if _is_integer(g) != _is_integer(p):            # an integer gold never matches a non-integer answer
        return False
    pv, gv = grading.arithmetic_value(p), grading.arithmetic_value(g)
    return pv is not None and gv is not None and abs(pv - gv) <= 1e-9 * max(1.0, abs(gv))


def score(row, extracted):
    """Does the benchmark of `row` (its source) count `extracted` right by its own rule? Never raises."""
    if extracted is None or not str(extracted).strip():
        return False                                # departure 3
    source = row.get("source")
    try:
        if source == "mathvista":  # evaluation/calculate_score.py: options by letter or nearest text
            return score_mathvista(extracted, row)
        elif source == "mathverse":  # a GPT judge, approximated
            return score_mathverse(extracted, row)
        elif source == "dynamath":  # VLMEvalKit's dynamath.py: |pred - gold| <= 0.001, letters, substrings
            return score_dynamath(extracted, row)
        elif source == "mathvision":  # evaluation/utils.py: find_math_answer, then text or 2-decimal values
            return score_mathvision(extracted, row)
        elif source == "wemath":  # evaluation/accuracy.py: the letter after the last "Answer"
            return score_wemath(extracted, row)
        elif source == "logicvista":  # VLMEvalKit's logicvista.py: the set of letters chosen
            return score_logicvista(extracted, row)
        elif source == "mmmu_pro":  # mmmu-pro/evaluate.py: parse_multi_choice_response, no random guess
            return score_mmmu_pro(extracted, row)
        elif source in ("geometry3k", "virl39k"):  # mathruler's grade_answer, as EasyR1 / verl grade them
            return score_mathruler(extracted, row)
        # MMK12 (a GPT judge), the synthetic task and anything else: the RL reward's own rule
        return grading.is_correct(extracted, row["answer"], row.get("choices"), row.get("precision"))
    except Exception:  # NOTE: a scorer bug must not stop an evaluation; the answer counts as wrong
        return False


# --- metrics over groups of rows -------------------------------------------------------------------------------------

def wemath_four_dimensions(steps):
    """We-Math's IK / IG / CM / RM over multi-step problems, strict and loose (four_dimensional_metrics.py).

    steps: {problem: {"subs": [bool, ...], "multi": bool}}. IK: a step wrong and the whole wrong; IG: every step
    right, the whole wrong; CM: the whole right with every step right (strict) / any step right (loose); RM: the
    whole right with a step wrong (strict) / every step wrong (loose). score = (n - IG/2 - RM - IK) / n.
    >>> r = wemath_four_dimensions({"1": {"subs": [True, True], "multi": True}, "2": {"subs": [True, False], "multi": True}})
    >>> r["score_strict"], r["score_loose"], r["rm_strict"]
    (0.5, 1.0, 1)
    """
    n = len(steps)
    counts = dict.fromkeys(("ik", "ig", "cm_strict", "cm_loose", "rm_strict", "rm_loose"), 0)
    for s in steps.values():
        subs, multi = s["subs"], s["multi"]
        counts["ik"] += (not all(subs)) and not multi
        counts["ig"] += all(subs) and not multi
        counts["cm_strict"] += all(subs) and multi
        counts["cm_loose"] += any(subs) and multi
        counts["rm_strict"] += (not all(subs)) and multi
        counts["rm_loose"] += (not any(subs)) and multi
    scores = {f"score_{kind}": (n - 0.5 * counts["ig"] - counts[f"rm_{kind}"] - counts["ik"]) / n if n else None
              for kind in ("strict", "loose")}
    return {**scores, "problems": n, **counts}


def group_metrics(source, metas, verdicts):
    """The metrics a benchmark defines over groups of rows, from each row's meta and 0/1 verdict (same order)."""
    if source == "dynamath":  # worst case: a seed question counts only if every variant of it is right
        seeds = {}
        for meta, v in zip(metas, verdicts):
            seeds.setdefault(meta.get("qid"), []).append(v)
        return {"worst_case": sum(all(vs) for vs in seeds.values()) / len(seeds), "seeds": len(seeds)} if seeds else {}
    if source == "wemath":
        groups = {}
        for meta, v in zip(metas, verdicts):
            key = meta.get("key", "")
            if "steps_" in key:
                entry = groups.setdefault((key.split("steps_")[0], meta.get("group")), {"subs": {}, "multi": None})
                if key.endswith("_multi"):
                    entry["multi"] = bool(v)
                else:
                    entry["subs"][key] = bool(v)
        complete = {f"{k[0]}steps/{k[1]}": {"subs": list(e["subs"].values()), "multi": e["multi"]}
                    for k, e in groups.items() if e["multi"] is not None and len(e["subs"]) == int(k[0] or 0)}
        return wemath_four_dimensions(complete) if complete else {}
    if source == "mathverse":
        versions = {}
        for meta, v in zip(metas, verdicts):
            versions.setdefault(meta.get("version", ""), []).append(v)
        return {k: sum(vs) / len(vs) for k, vs in sorted(versions.items())}
    return {}
