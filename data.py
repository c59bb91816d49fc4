"""Data for AT-RL: the synthetic VisualMath task, answer grading and rewards, benchmark loaders.

Everything the RL loop reads comes through one schema (UNIFIED_FEATURES): an image, a question, a gold
answer, optional choices, MathVista's precision/unit, and -- for VisualMath only -- the ground-truth
`perception` values (what must be read off the image) and a reference response.

    VisualMath   make_visualmath(n, seed, n_numbers, digits, ops, cell, layout, noise, shapes)
                 image = numbers in slots (+ shapes to count); answer = an integer; perception = the read
                 values; response = "<think>a+b=s</think><answer>s</answer>"; locate_perception() finds the
                 perception values in any response, which is how anchor precision is measured (experiment.py)
    reward       R = 0.9 * accuracy + 0.1 * format      (compute_reward; DeepSeek-R1 / DAPO-style rules)
                 accuracy = is_correct(extract_answer(response), gold); format = exactly <think>..</think><answer>..</answer>
    loaders      load_benchmark(hub name | parquet/json/jsonl | folder) for Geometry3K, MathVista (testmini),
                 MathVerse and ViRL39K -> the unified schema, with errors that name the row and the field

Where we depart / choose (each documented at its section):
  1. VisualMath puts each number in a fixed 28 px slot = one merged Qwen2.5-VL vision token, so a ~1M
     parameter model learns to read in a minute on a CPU (random positions stayed at chance for minutes).
  2. An unclosed final <answer> still counts for accuracy (a truncated response did state its answer) but
     gets format 0. Listed or hedged numbers ("2 3", "5 or 3") never match a single gold value.
  3. Multi-image rows keep their first image (the pipeline is single-image).

Run: `python -m pytest -q tests/test_grading.py tests/test_loaders.py tests/test_data_synthetic.py`.
"""

# --------------------------------------------------------------------------------------------------
# Synthetic VisualMath
# --------------------------------------------------------------------------------------------------

# (section: synthetic VisualMath — make_visualmath, locate_perception)
#
# The task: an image shows a few numbers in slots; the question asks for an arithmetic expression over
# them; the answer is an integer. What must be *read* off the image (the perception values) is known
# exactly, so we can check later whether the tokens the model writes for them are the "anchor" tokens
# that attend to the image (DESIGN §5 q2).
#
# Default layout, chosen for learnability by the tiny model (see tiny.py): each number sits in a fixed
# slot of `cell` x `cell` pixels, side by side, so with cell=28 one slot is exactly one merged vision
# token of Qwen2.5-VL (patch 14, merge 2 => 28 px). Digits are Pillow's built-in bitmap font (no font
# files needed), scaled up with nearest-neighbour so strokes stay crisp; colours and a little pixel
# noise vary so that no two images are identical.

import io
import json
import math
import os
import random
import re

import datasets
import PIL.Image
from PIL import ImageDraw, ImageFont

_OPS = ("+", "-", "*")
_LETTERS = "abcdefgh"


def _render_number(text, fg, scale):
    """Draw `text` with Pillow's bitmap font, scaled by an integer factor -> RGBA tile (transparent bg)."""
    font = ImageFont.load_default_imagefont()  # built into Pillow: 6x11 px per digit
    left, top, right, bottom = font.getbbox(text)
    small = PIL.Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(small).text((-left, -top), text, fill=255, font=font)
    big = small.resize((small.width * scale, small.height * scale), PIL.Image.NEAREST)
    tile = PIL.Image.new("RGBA", big.size, fg + (0,))
    tile.putalpha(big)
    return tile


def _draw_shapes(img, x0, cell, n_shapes, rng):
    """n_shapes filled circles/squares/triangles in distinct cells of a 4x2 grid (cell/2 px each) at x0."""
    g = cell // 2  # with cell=28: one grid cell = one 14-px vision patch
    draw = ImageDraw.Draw(img)
    for spot in rng.sample(range(8), n_shapes):
        left, top = x0 + (spot % 4) * g + 2, (spot // 4) * g + 2
        box = (left, top, left + g - 5, top + g - 5)
        colour = rng.choice([(220, 30, 30), (30, 150, 40), (30, 60, 220), (230, 150, 0), (150, 40, 180)])
        kind = rng.choice(["circle", "square", "triangle"])
        if kind == "circle":
            draw.ellipse(box, fill=colour)
        elif kind == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)


def _render_image(values, digits, cell, layout, noise, rng, n_shapes=0):
    """Place each value in its slot; returns (PIL RGB image). Slot i spans x in [i*w, (i+1)*w), w = cell*digits.

    With n_shapes > 0 a 2*cell x cell panel of shapes to count is appended on the right.
    """
    slot_w = cell * digits
    panel_w = 2 * cell if n_shapes else 0
    if layout == "fixed":
        width, height = slot_w * len(values) + panel_w, cell
        origins = [(i * slot_w, 0) for i in range(len(values))]
    elif layout == "jitter":
        # A 2-row canvas; numbers keep their left-to-right order but move within a wider region.
        width, height = slot_w * len(values) + cell + panel_w, 2 * cell
        origins = [(i * slot_w + rng.randrange(cell + 1), rng.randrange(cell + 1)) for i in range(len(values))]
    else:
        raise ValueError(f"layout={layout!r}: use 'fixed' or 'jitter'")
    bg = tuple(rng.randrange(200, 256) for _ in range(3))  # light background
    fg = tuple(rng.randrange(0, 90) for _ in range(3))  # dark ink
    img = PIL.Image.new("RGB", (width, height), bg)
    scale = max(1, (cell - 4) // 11)  # glyph height 11 px -> fills most of the slot
    for v, (x0, y0) in zip(values, origins):
        tile = _render_number(str(v), fg, scale)
        # centre the tile in its slot (fixed) or in its jittered box
        x = x0 + (slot_w - tile.width) // 2
        y = y0 + (cell - tile.height) // 2
        img.paste(tile, (x, y), tile)
    if n_shapes:
        _draw_shapes(img, width - panel_w, cell, n_shapes, rng)
    if noise > 0:
        # Random-colour pixels drawn from the same seeded rng (one seed source => determinism).
        px = img.load()
        for _ in range(int(noise * width * height)):
            x, y = rng.randrange(width), rng.randrange(height)
            px[x, y] = tuple(rng.randrange(256) for _ in range(3))
    return img


def visualmath_example(rng, n_numbers=2, digits=1, ops=("+",), cell=28, layout="fixed", noise=0.02, shapes=0):
    """One example as a plain dict (no Dataset): the generator used by make_visualmath.

    >>> ex = visualmath_example(random.Random(0))
    >>> ex["response"] == f"<think>{ex['perception'][0]}+{ex['perception'][1]}={ex['answer']}</think><answer>{ex['answer']}</answer>"
    True
    >>> ex["image"].size
    (56, 28)
    """
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    values = [rng.randint(lo, hi) for _ in range(n_numbers)]
    chosen = [rng.choice(list(ops)) for _ in range(n_numbers - 1)]
    names = _LETTERS[:n_numbers]
    n_shapes = 0
    if shapes:  # the shape count n joins the expression as one more operand (drawn only if asked:
        # the default task's random stream, hence its datasets, do not depend on this knob's existence)
        n_shapes = rng.randint(1, shapes)
        values, chosen, names = values + [n_shapes], chosen + [rng.choice(list(ops))], names + "n"
    # Expression over names (for the question) and over values (for the reference reasoning).
    expr_names = names[0] + "".join(f" {op} {nm}" for op, nm in zip(chosen, names[1:]))
    expr_values = str(values[0]) + "".join(f"{op}{v}" for op, v in zip(chosen, values[1:]))
    answer = eval(expr_values)  # NOTE: only digits and + - * from our own generator reach eval
    numbers = names[:n_numbers]
    if n_numbers == 1:
        question = "The image shows a number a."
    else:
        question = f"The image shows {n_numbers} numbers; call them {', '.join(numbers[:-1])} and {numbers[-1]} from left to right."
    if n_shapes:
        question += " Let n be the number of shapes on the right."
    question += f" What is {expr_names}?"
    image = _render_image(values[:n_numbers], digits, cell, layout, noise, rng, n_shapes)
    response = f"<think>{expr_values}={answer}</think><answer>{answer}</answer>"
    return dict(image=image, question=question, answer=str(answer), choices=[],
                perception=[str(v) for v in values], response=response,
                precision=None, unit="", source="visualmath")


def make_visualmath(n, seed=0, n_numbers=2, digits=1, ops=("+",), cell=28, layout="fixed", noise=0.02, shapes=0):
    """`n` synthetic VisualMath examples in the unified schema, deterministic for a given seed.

    Knobs: n_numbers (how many numbers to read), digits (per number), ops (drawn per gap from this set:
    '+', '-', '*'; usual precedence), cell (slot size in px; 28 = one merged Qwen2.5-VL token),
    layout ('fixed' slots side by side, or 'jitter': numbers move within a larger 2-row canvas),
    noise (fraction of pixels replaced by random colours), shapes (if > 0: a panel on the right holds
    1..shapes coloured shapes, at most 8, and their count n is one more operand and perception value).

    >>> ds = make_visualmath(3, seed=1)
    >>> len(ds), ds[0]["source"], ds[0]["image"].size
    (3, 'visualmath', (56, 28))
    >>> make_visualmath(3, seed=1)["response"] == ds["response"]
    True
    """
    if n_numbers < 1 or digits < 1 or not ops or not set(ops) <= set(_OPS) or not 0 <= shapes <= 8:
        raise ValueError(f"bad knobs n_numbers={n_numbers} digits={digits} ops={ops!r} shapes={shapes}: need "
                         f">=1, >=1, a non-empty subset of {list(_OPS)}, 0..8")
    rng = random.Random(seed)
    rows = [visualmath_example(rng, n_numbers, digits, ops, cell, layout, noise, shapes) for _ in range(n)]
    for i, row in enumerate(rows):
        row["id"] = f"visualmath-{seed}-{i}"
    # the loaders' schema (UNIFIED_FEATURES, defined with them below): synthetic and real data look the same
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in UNIFIED_FEATURES}, features=UNIFIED_FEATURES)


def locate_perception(text, perception):
    """Character spans (start, end) of the perception values in `text`, whole numbers only, one per value.

    Each value takes the first occurrence after the previous value's match; if there is none, the first
    unused occurrence anywhere (a model may write "4+3" for perception ["3", "4"]). A value that does not
    occur is left out, so the result may be shorter than `perception`; spans follow perception's order.

    >>> locate_perception("<think>3+4=7</think><answer>7</answer>", ["3", "4"])
    [(7, 8), (9, 10)]
    >>> locate_perception("<think>3+3=6</think>", ["3", "3"])
    [(7, 8), (9, 10)]
    >>> locate_perception("<think>4+3=7</think>", ["3", "4"])   # other order
    [(9, 10), (7, 8)]
    >>> locate_perception("12+2=14", ["2", "12"])   # '2' inside '12' is not a match
    [(3, 4), (0, 2)]
    """
    spans, used, cursor = [], set(), 0
    for value in perception:
        pattern = re.compile(r"(?<![0-9.])" + re.escape(str(value)) + r"(?![0-9])")
        matches = [m.span() for m in pattern.finditer(text) if m.span() not in used]
        after = [span for span in matches if span[0] >= cursor]
        span = after[0] if after else (matches[0] if matches else None)
        if span is None:
            continue
        spans.append(span)
        used.add(span)
        cursor = span[1]
    return spans


# --------------------------------------------------------------------------------------------------
# Grading and rewards
# --------------------------------------------------------------------------------------------------

# Grading turns a free-form model response into a verifiable reward. Three steps:
#   extract_answer(response) -> the model's final answer string (or None)
#   is_correct(pred, gold)   -> does it match the gold answer (numbers, LaTeX, choice letters)?
#   compute_reward(...)      -> R = (1 - w) * accuracy + w * format,  w = format_weight = 0.1
# NOTE: these run on raw model output inside the RL loop, so they must never raise and never hang:
#   - no regex here has ambiguous nested repeats or unbounded gaps (no catastrophic backtracking);
#   - the fallback searches only the last _TAIL_CHARS characters of a response;
#   - the tiny arithmetic evaluator only sees strings of at most _MAX_EXPR_CHARS characters;
#   - the public functions catch anything unforeseen and grade it as "no answer" / "wrong".
# References: the <think>/<answer> format of DeepSeek-R1 (arXiv 2501.12948) and the rule-based
# reward of DAPO/verl (verl/utils/reward_score/math.py: last \boxed{}, string normalisation);
# MathVista's evaluation (github.com/lupantech/MathVista, evaluation/calculate_score.py) for
# precision-rounded floats and option-text answers.

_TAIL_CHARS = 2000      # the fallback extractor looks only at the end of a response
_MAX_EXPR_CHARS = 100   # longer "answers" are compared as strings, never evaluated
_MAX_ANSWER_CHARS = 1000  # longer predictions are only compared verbatim (normalising is quadratic)
_CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# "The answer is (B)", "Final answer: 42", "answer = 3/4", "the correct option is C".
# Bounded repeats only, so matching stays linear.
_ANSWER_PHRASE = re.compile(r"(?:answer|option|choice)\**\s{0,5}(?:is|:|=)\s{0,5}:?\**\s{0,5}([^\n]{0,60})",
                            re.IGNORECASE)
# A choice letter at the start of a short answer: "B", "(B)", "B.", "B) 12", "B: larger", but not
# the "I" of "I think" nor the "A" of "A cat".
_LETTER_ANSWER = re.compile(r"\(([A-Za-z])\)|([A-Za-z])(?:$|[.:),])")
# A number as written in text: sign, thousands separators, decimals, a fraction, a percent sign.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?%?|[-+]?\.\d+%?")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_LEADING_VARIABLE = re.compile(r"^[a-z]\w{0,10}\s{0,3}=\s{0,3}")   # "x = 5" -> "5"
# "5 cm^2" -> unit "cm^2". Digits only after "^": "5 or 3" must not normalise to "5".
_TRAILING_WORDS = re.compile(r"\s{0,3}([a-z][a-z./ ]{0,40}(?:\^\{?[23]\}?)?)$")
_NOT_UNITS = {"pi", "sqrt", "e", "i"}                               # letters that carry value
# Units that may follow a number without a space ("5cm"); "4x" keeps its x (an algebra answer).
_KNOWN_UNITS = {"mm", "cm", "m", "km", "in", "ft", "yd", "mi", "mg", "g", "kg", "lb", "lbs", "s",
                "sec", "min", "h", "hr", "ml", "l", "units", "unit", "deg", "px", "mph", "kmh"}
_BOXED = re.compile(r"\\(?:boxed|fbox)(?: {0,3}\{| {1,3}[^\s{])")   # "\boxed{" or "\boxed 5"
_BRACE = re.compile(r"[{}]")
_TIGHT_PUNCT = re.compile(r"\s*([^\w\s])\s*")


def _find_braced(text, open_at):
    """End index (exclusive) of the {...} group whose '{' is at text[open_at], or -1 if unbalanced.
    Quadratic if called for many groups of a long text: only used on short, capped strings."""
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return -1  # unbalanced: the model was cut off or wrote "\boxed{3"


def _last_boxed(text):
    """Content of the last balanced \\boxed{...} (or \\fbox{...}) in text, else None.

    One pass over the braces with a stack (linear even for 1 MB of "\\boxed{\\boxed{..."), then the
    last box whose opening brace was closed wins; "\\boxed 5" without braces also counts.
    """
    starts = [m.end() - 1 for m in _BOXED.finditer(text)]  # index of each box's "{" or token
    if not starts:
        return None
    closing, stack = {}, []
    for m in _BRACE.finditer(text):
        if m.group(0) == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    for j in reversed(starts):
        if text[j] == "{":
            if j in closing and text[j + 1:closing[j]].strip():
                return text[j + 1:closing[j]].strip()
        else:
            return text[j:].split()[0]  # "\boxed 5"
    return None


def _leading_letter(s):
    m = _LETTER_ANSWER.match(s)
    return (m.group(1) or m.group(2)) if m else None


def _said_answer(text):
    """What follows the last "answer is" / "option:" phrase of text (letter, math token or number).

    The first word after the phrase is kept whole when it looks like math ("3\\sqrt{3}",
    "$\\frac{1}{2}$", "1,234"), so that "the answer is 3\\sqrt{3}" does not grade as "3".
    """
    phrases = list(_ANSWER_PHRASE.finditer(text[-_TAIL_CHARS:]))
    if not phrases:
        return None
    said = phrases[-1].group(1).strip().strip("*").strip()  # "**Answer:** B" (markdown)
    letter = _leading_letter(said)
    if letter and letter.isupper():
        return letter
    words = said.split()
    token = words[0].rstrip(".,;:") if words else ""
    if any(ch.isdigit() for ch in token) or token.startswith(("\\", "$")):
        return token
    number = _NUMBER.search(said)  # "the answer is I think 12"
    return number.group(0) if number else None


def _extract(text):
    lower = text.lower()
    # 1) The last <answer> tag. We tolerate a missing </answer> on the LAST tag (a response cut
    #    off at max_tokens right after the answer still states it); the format reward stays 0.
    i = lower.rfind("<answer>")
    if i >= 0:
        j = lower.find("</answer>", i)
        inner = text[i + 8:j if j >= 0 else len(text)].strip()
        boxed = _last_boxed(inner)  # "<answer>\boxed{5}</answer>" is common: unwrap it
        if boxed is not None:
            return boxed
        # "<answer>The answer is 5.</answer>": a sentence inside the tag, read like free text.
        return _said_answer(inner) or inner or None
    # 2) The last \boxed{...}.
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    # 3) Free text: the last "answer is ..." phrase, else the last number. Only the tail is
    #    searched: the answer comes last, and it bounds the work on megabyte responses.
    said = _said_answer(text)
    if said:
        return said
    numbers = list(_NUMBER.finditer(text[-_TAIL_CHARS:]))
    return numbers[-1].group(0) if numbers else None


def extract_answer(text):
    """The model's final answer as a string, or None when it gave none.

    Priority: the last <answer>...</answer> (an unclosed final <answer> counts; a \\boxed{} inside
    it is unwrapped), else the last balanced \\boxed{...}, else the last "answer is X" phrase
    (choice letter or number), else the last number in the text.

    >>> extract_answer("<think>2+2</think><answer> 4 </answer>")
    '4'
    >>> extract_answer("so the area is \\\\boxed{\\\\frac{1}{2}} and \\\\boxed{\\\\sqrt{3}}")
    '\\\\sqrt{3}'
    >>> extract_answer("Comparing all options, the answer is (B).")
    'B'
    >>> extract_answer("3 apples and 4 pears make 7") , extract_answer("no idea") , extract_answer(None)
    ('7', None, None)
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        return _extract(text)
    except Exception:  # NOTE: never let a grader bug kill an RL run; an unreadable answer scores 0
        return None


# --- normalisation and a tiny safe evaluator ------------------------------------------------------

def _replace_braced_command(s, name, fn):
    """Replace every `name{a}` (or `name{a}{b}` when fn takes two args) using balanced braces."""
    nargs = fn.__code__.co_argcount
    out, k = [], 0
    while True:
        i = s.find(name, k)
        if i < 0:
            out.append(s[k:])
            return "".join(out)
        out.append(s[k:i])
        j, args = i + len(name), []
        if j < len(s) and s[j].isalpha():  # "\textbf" is not "\text" + "bf"
            out.append(name)
            k = j
            continue
        for _ in range(nargs):
            while j < len(s) and s[j] == " ":
                j += 1
            if j < len(s) and s[j] == "{":
                end = _find_braced(s, j)
                if end < 0:
                    break
                args.append(s[j + 1:end - 1])
                j = end
            elif j < len(s) and s[j].isdigit():
                args.append(s[j])  # "\frac12" -> args "1", "2"; "\sqrt3" -> "3"
                j += 1
            else:
                break
        if len(args) == nargs:
            out.append(fn(*args))
        else:
            out.append(s[i:j])  # malformed: keep the text as written
        k = max(j, i + len(name))


def _normalize(s):
    """Canonical lower-case text of an answer: LaTeX wrappers, units, degrees and spaces removed.

    >>> _normalize("$\\\\text{B}$"), _normalize("\\\\dfrac{3}{4}"), _normalize("45^{\\\\circ}")
    ('b', '(3)/(4)', '45')
    >>> _normalize("x = 5 cm"), _normalize("5 or 3")
    ('5', '5 or 3')
    """
    s = str(s).strip()
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                 ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", " "), ("\\%", "%"), ("\\$", ""),
                 ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("°", ""), ("\\cdot", "*"),
                 ("\\times", "*"), ("\\pi", "pi"), ("π", "pi"), ("√", "\\sqrt"), ("−", "-"),
                 ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""), ("$", "")):
        s = s.replace(a, b)
    for cmd in ("\\text", "\\textbf", "\\textrm", "\\texttt", "\\mathrm", "\\mathbf", "\\mathit",
                "\\boldsymbol", "\\mbox", "\\operatorname"):
        s = _replace_braced_command(s, cmd, lambda a: a)
    s = _replace_braced_command(s, "\\frac", lambda a, b: f"({a})/({b})")
    s = _replace_braced_command(s, "\\sqrt", lambda a: f"sqrt({a})")
    s = s.lower().strip().rstrip(".").strip()
    s = _LEADING_VARIABLE.sub("", s)
    for word in (" degrees", " degree", " percent"):
        if s.endswith(word):
            s = s[: -len(word)] + ("%" if word == " percent" else "")
    # Drop a trailing unit ("5 cm", "12 units", "3 cm^2") unless the "unit" is pi/sqrt/e.
    unit = _TRAILING_WORDS.search(s)
    if unit and unit.start() > 0:
        words = set(re.split(r"[\s./^]+", unit.group(1)))
        spaced = s[unit.start()] == " "
        head = s[: unit.start()].strip()
        if (not words & _NOT_UNITS and head and (head[-1].isdigit() or head[-1] in ")%")
                and (spaced or re.split(r"[\^/]", unit.group(1))[0] in _KNOWN_UNITS)):
            s = head
    return " ".join(s.split())


def _tokenize(s):
    tokens, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch.isdigit() or ch == ".":
            j = i
            while j < len(s) and (s[j].isdigit() or s[j] == "."):
                j += 1
            tokens.append(float(s[i:j]))  # "1.2.3" raises ValueError -> not a number
            i = j
        elif s.startswith("sqrt", i):
            tokens.append("sqrt")
            i += 4
        elif s.startswith("pi", i):
            tokens.append("pi")
            i += 2
        elif ch in "+-*/^()":
            tokens.append(ch)
            i += 1
        elif ch in "{}":
            tokens.append("(" if ch == "{" else ")")  # "2^{10}" groups like parentheses
            i += 1
        elif ch == " ":
            i += 1
        else:
            raise ValueError(f"not arithmetic: {ch!r}")
    return tokens


def _evaluate(s):
    """Value of a short arithmetic string (numbers, + - * / ^, sqrt, pi, parentheses) or None.

    A recursive-descent parser instead of eval(): model output is untrusted.
    >>> round(_evaluate("2sqrt(3)"), 4), _evaluate("(3)/(4)"), _evaluate("-1,234"), _evaluate("cat")
    (3.4641, 0.75, -1234.0, None)
    """
    if len(s) > _MAX_EXPR_CHARS:
        return None
    s = s.strip()
    if _THOUSANDS.fullmatch(s.rstrip("%")):
        s = s.replace(",", "")
    percent = s.endswith("%")
    try:
        tokens = _tokenize(s[:-1] if percent else s)
        pos = 0

        def peek():
            return tokens[pos] if pos < len(tokens) else None

        def take():
            nonlocal pos
            pos += 1
            return tokens[pos - 1]

        def expr():  # expr := term (('+'|'-') term)*
            value = term()
            while peek() in ("+", "-"):
                value = value + term() if take() == "+" else value - term()
            return value

        def term():  # term := unary (('*'|'/'|implicit) unary)*   "2sqrt(3)" is 2*sqrt(3)
            value = unary()
            while peek() is not None and peek() not in ("+", "-", ")"):
                if peek() in ("*", "/"):
                    op = take()
                elif isinstance(peek(), float):
                    # NOTE: "2 3" is not 6 (nor 23): a policy must not match golds by listing numbers
                    raise ValueError("two numbers in a row")
                else:
                    op = "*"
                rhs = unary()
                value = value * rhs if op == "*" else value / rhs
            return value

        def unary():
            if peek() in ("+", "-"):
                return unary() if take() == "+" else -unary()
            return power()

        def power():
            base = atom()
            if peek() == "^":
                take()
                return math.pow(base, unary())
            return base

        def atom():
            tok = take()
            if isinstance(tok, float):
                return tok
            if tok == "pi":
                return math.pi
            if tok == "sqrt":
                return math.sqrt(atom())
            if tok == "(":
                value = expr()
                if take() != ")":
                    raise ValueError("unbalanced")
                return value
            raise ValueError(f"unexpected {tok!r}")

        value = expr()
        if pos != len(tokens) or not math.isfinite(value):
            return None
        return value / 100 if percent else value
    except (ValueError, ZeroDivisionError, OverflowError, IndexError, TypeError, RecursionError):
        return None


def _decimals(s):
    """Digits after the point if s is a plain decimal literal ("3.46" -> 2, "7" -> 0), else None
    (None marks an exact symbolic value such as 2sqrt(3) or 1/3)."""
    s = s.replace(",", "").rstrip("%")
    if not _PLAIN_DECIMAL.fullmatch(s):
        return None
    return len(s.split(".")[1]) if "." in s else 0


def _numbers_match(a_text, b_text, precision):
    a, b = _evaluate(a_text), _evaluate(b_text)
    if a is None or b is None:
        return False
    # A percent may be written either way: "50%" == "0.5" and also == "50" (a unit-like suffix).
    candidates = [(a, b)]
    if a_text.endswith("%"):
        candidates.append((a * 100, b))
    if b_text.endswith("%"):
        candidates.append((a, b * 100))
    for x, y in candidates:
        if precision is not None:
            # MathVista: gold has `precision` decimals; the prediction is rounded the same way.
            if abs(round(x, precision) - round(y, precision)) < 10.0 ** (-precision - 3):
                return True
        if abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y)):
            return True
        # An exact symbolic value vs its decimal approximation: "2\sqrt{3}" == "3.46" (>= 2 decimals,
        # so that a coarse "3.5" is not accepted for 3.4641).
        da, db = _decimals(a_text), _decimals(b_text)
        for exact_dec, approx_dec in ((da, db), (db, da)):
            if exact_dec is None and approx_dec is not None and approx_dec >= 2:
                if abs(x - y) <= 0.5 * 10.0 ** (-approx_dec) + 1e-12:
                    return True
    return False


def _answer_letter(text):
    """The choice letter a short answer starts with, as written or once LaTeX is stripped."""
    return _leading_letter(text.strip()) or _leading_letter(_normalize(text))


def _choice_index(text, choices):
    """Index of the option a short answer names: by letter ("B", "(b)", "B. 12") or by option text."""
    if not choices:
        return None
    letter = _answer_letter(text)
    if letter:
        idx = _CHOICE_LETTERS.find(letter.upper())
        if 0 <= idx < len(choices):
            return idx
    norm = _normalize(text)
    for idx, option in enumerate(choices):
        option_norm = _normalize(option)
        if norm == option_norm or (len(norm) <= _MAX_EXPR_CHARS and _numbers_match(norm, option_norm, None)):
            return idx
    return None


def _is_correct(pred, gold, choices=None, precision=None):
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    if len(pred) > _MAX_ANSWER_CHARS:
        return pred == gold  # no benchmark answer is this long; don't normalise a 1 MB string
    choices = [str(c) for c in choices] if choices else []
    if precision is not None:
        precision = int(precision)
    # Multiple choice: map both sides to an option index when they name one.
    if choices:
        gold_idx, pred_idx = _choice_index(gold, choices), _choice_index(pred, choices)
        if gold_idx is not None and pred_idx is not None:
            return gold_idx == pred_idx
    elif len(gold.strip("()")) == 1 and gold.strip("()").isalpha() and gold.strip("()").isupper():
        # A letter gold without the options: compare letters ("(B)", "b", "B." all mean B).
        letter = _answer_letter(pred)
        return bool(letter) and letter.upper() == gold.strip("()")
    p, g = _normalize(pred), _normalize(gold)
    # Spaces next to punctuation don't matter ("[1, 2]" == "[1,2]"); between words/digits they do.
    if p == g or _TIGHT_PUNCT.sub(r"\1", p) == _TIGHT_PUNCT.sub(r"\1", g):
        return True
    return _numbers_match(p, g, precision)


def is_correct(pred, gold, choices=None, precision=None):
    """Does the extracted answer `pred` match the gold answer?

    Numbers are compared by value (signs, "1,234", decimals, fractions, percent, \\frac, \\sqrt, pi,
    units and degree signs ignored); `precision` (decimal places, MathVista) rounds both sides;
    with `choices`, a letter and its option text are the same answer, both ways.

    >>> is_correct("1,234", "1234"), is_correct("\\\\dfrac{1}{2}", "0.5"), is_correct("50%", "0.5")
    (True, True, True)
    >>> is_correct("B", "larger than", choices=["smaller than", "larger than"])
    True
    >>> is_correct("1.27", "1.3", precision=1), is_correct("-3", "3"), is_correct(None, "3")
    (True, False, False)
    """
    try:
        return _is_correct(pred, gold, choices, precision)
    except Exception:  # NOTE: see extract_answer -- a grader bug must not crash training
        return False


def format_ok(response):
    """1.0 iff the response is exactly <think>...</think><answer>...</answer> (whitespace around and
    between the two blocks allowed; each tag exactly once; a non-empty answer).

    String operations, not a DOTALL regex: `<think>(.*?)</think>` backtracks quadratically on
    responses full of stray tags.
    >>> format_ok(" <think>a</think>\\n<answer>4</answer>\\n"), format_ok("<answer>4</answer>")
    (1.0, 0.0)
    """
    if not isinstance(response, str):
        return 0.0
    s = response.strip()
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if not (s.startswith("<think>") and s.endswith("</answer>")):
        return 0.0
    if any(s.count(tag) != 1 for tag in tags):
        return 0.0
    think_end, answer_start = s.find("</think>"), s.find("<answer>")
    if answer_start < think_end or s[think_end + len("</think>"):answer_start].strip():
        return 0.0
    return 1.0 if s[answer_start + len("<answer>"):-len("</answer>")].strip() else 0.0


def compute_reward(response, answer, choices=None, format_weight=0.1, precision=None):
    """Verifiable reward of one response: R = (1 - format_weight) * accuracy + format_weight * format.

    accuracy = is_correct(extract_answer(response), answer); format = format_ok(response).
    >>> compute_reward("<think>3+4</think><answer>7</answer>", "7")
    {'reward': 1.0, 'accuracy': 1.0, 'format': 1.0}
    >>> compute_reward("It is 7.", "7")   # right but unformatted: 0.9
    {'reward': 0.9, 'accuracy': 1.0, 'format': 0.0}
    """
    accuracy = 1.0 if is_correct(extract_answer(response), answer, choices, precision) else 0.0
    fmt = format_ok(response)
    reward = (1.0 - format_weight) * accuracy + format_weight * fmt
    return {"reward": round(reward, 12), "accuracy": accuracy, "format": fmt}

# --------------------------------------------------------------------------------------------------
# Benchmark loaders
# --------------------------------------------------------------------------------------------------

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
    if len(options) < 2 or [letter for letter, _ in options] != list(_CHOICE_LETTERS[:len(options)]):
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
    return question + "\nChoices:\n" + "\n".join(f"{_CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices))


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
        answer = _last_boxed(answer) or answer  # ViRL39K golds are all "\boxed{...}"
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
