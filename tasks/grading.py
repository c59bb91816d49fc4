"""Grading: turn a free-form model response into a verifiable reward, without ever raising or hanging.

    extract_answer(response) -> the model's final answer string (or None): the last <answer>...</answer>,
                                else the last \\boxed{...}, else the last "answer is X", else the last number
    is_correct(pred, gold)   -> does it match the gold answer (numbers by value, LaTeX, choice letters)?
    format_ok(response)      -> 1.0 iff exactly <think>...</think><answer>...</answer>
    compute_reward(...)      -> R = (1 - w) * accuracy + w * format,  w = format_weight = 0.1

Where we choose (each documented at its function):
  1. An unclosed final <answer> still counts for accuracy (a truncated response did state its answer) but
     gets format 0. Listed or hedged numbers ("2 3", "5 or 3") never match a single gold value.
  2. Numbers are compared by value ("1,234" = "1234", "50%" = "0.5", "\\frac{1}{2}" = "0.5"), with MathVista's
     `precision` rounding both sides; a choice letter and its option text are the same answer.

NOTE: these run on raw model output inside the RL loop, so they must never raise and never hang:
  - no regex here has ambiguous nested repeats or unbounded gaps (no catastrophic backtracking);
  - the fallback searches only the last _TAIL_CHARS characters of a response;
  - the tiny arithmetic evaluator only sees strings of at most _MAX_EXPR_CHARS characters;
  - the public functions catch anything unforeseen and grade it as "no answer" / "wrong".

References: the <think>/<answer> format of DeepSeek-R1 (arXiv 2501.12948) and the rule-based reward of
DAPO/verl (verl/utils/reward_score/math.py: last \\boxed{}, string normalisation); MathVista's evaluation
(github.com/lupantech/MathVista, evaluation/calculate_score.py) for precision-rounded floats and option-text
answers. Run: `python -m pytest -q tests/test_grading.py` (>= 100 cases, including hostile inputs).
"""

import math
import re

_TAIL_CHARS = 2000      # the fallback extractor looks only at the end of a response
_MAX_EXPR_CHARS = 100   # longer "answers" are compared as strings, never evaluated
_MAX_ANSWER_CHARS = 1000  # longer predictions are only compared verbatim (normalising is quadratic)
CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

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
# The name left of an answer's last "=": "x", "m∠h", "∠2", "area", "d" (no operators, digits only inside it):
# "m\angle H = 97" and "Area $=113.1 \mathrm{~cm}^{2}$" are their right-hand sides.
_ANSWER_NAME = re.compile(r"[a-z∠][a-z0-9_∠{}^' ]{0,40}")
# A bearing written with a degree sign and T (True north): "315^\circT", "118掳T" (掳 is ° read in the wrong encoding).
_BEARING_T = re.compile(r"((?:°|掳|\\circ)\}?) ?T\b")
# A unit glued to pi: "4πcm" is 4π (MathVista options), as is "4\pi cm".
_COMPASS = re.compile(r"[nsew]\s{0,3}[\d.]+\s{0,3}[nsew]")      # "s 23.5 w": a bearing, whose last letter is no unit
_PI_UNIT = re.compile(r"pi ?(?:mm|cm|m|km|in|ft|units?)(?:\^\{?[23]\}?)?$")
# "5 cm^2" -> unit "cm^2". Digits only after "^": "5 or 3" must not normalise to "5".
_TRAILING_WORDS = re.compile(r"\s{0,3}([a-z][a-z./ ]{0,40}(?:\^\{?[23]\}?)?)$")
_NOT_UNITS = {"pi", "sqrt", "e", "i"}                               # letters that carry value
# Units that may follow a number without a space ("5cm"); "4x" keeps its x (an algebra answer).
_KNOWN_UNITS = {"mm", "cm", "m", "km", "in", "ft", "yd", "mi", "mg", "g", "kg", "lb", "lbs", "s",
                "sec", "min", "h", "hr", "ml", "l", "units", "unit", "deg", "px", "mph", "kmh"}
_BOXED = re.compile(r"\\(?:boxed|fbox)(?: {0,3}\{| {1,3}[^\s{])")   # "\boxed{" or "\boxed 5"
_BRACE = re.compile(r"[{}]")
# Two or more option letters: "B, D", "A and C", "A & C", "AC" (LogicVista's multi-answer golds).
_LETTER_SET = re.compile(r"[A-J](?:\s{0,3}(?:,|and|&|;)?\s{0,3}[A-J]){1,9}")
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


def last_boxed(text):
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
        boxed = last_boxed(inner)  # "<answer>\boxed{5}</answer>" is common: unwrap it
        if boxed is not None:
            return boxed
        # "<answer>The answer is 5.</answer>": a sentence inside the tag, read like free text.
        return _said_answer(inner) or inner or None
    # 2) The last \boxed{...}.
    boxed = last_boxed(text)
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
    s = _BEARING_T.sub(r"\1", str(s).strip())
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                 ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", " "), ("\\%", "%"), ("\\$", ""),
                 ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("°", ""), ("掳", ""), ("\\cdot", "*"),
                 ("\\times", "*"), ("\\pi", "pi"), ("π", "pi"), ("√", "\\sqrt"), ("−", "-"),
                 ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""), ("$", ""), ("\\angle", "∠"), ("~", " ")):
        s = s.replace(a, b)
    for cmd in ("\\text", "\\textbf", "\\textrm", "\\texttt", "\\mathrm", "\\mathbf", "\\mathit",
                "\\boldsymbol", "\\mbox", "\\operatorname"):
        s = _replace_braced_command(s, cmd, lambda a: a)
    s = _replace_braced_command(s, "\\frac", lambda a, b: f"({a})/({b})")
    s = _replace_braced_command(s, "\\sqrt", lambda a: f"sqrt({a})")
    s = s.lower().strip().rstrip(".").strip()
    lhs, eq, rhs = s.rpartition("=")
    if eq and rhs.strip() and _ANSWER_NAME.fullmatch(lhs.strip()):
        s = rhs.strip()  # "x = 5", "m∠h = 97": the value named
    s = _PI_UNIT.sub("pi", s)
    for word in (" degrees", " degree", " percent"):
        if s.endswith(word):
            s = s[: -len(word)] + ("%" if word == " percent" else "")
    # Drop a trailing unit ("5 cm", "12 units", "3 cm^2") unless the "unit" is pi/sqrt/e.
    unit = None if _COMPASS.fullmatch(s) else _TRAILING_WORDS.search(s)
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
        idx = CHOICE_LETTERS.find(letter.upper())
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
        if gold_idx is not None and pred_idx is not None:  # by option text: MathVista repeats options ("18", "18")
            return gold_idx == pred_idx or _normalize(choices[gold_idx]) == _normalize(choices[pred_idx])
    elif _LETTER_SET.fullmatch(gold):
        # Several letters (LogicVista "A, C"): the same set, in any order or spelling ("C and A", "AC").
        found = _LETTER_SET.fullmatch(pred.strip().rstrip("."))
        return bool(found) and sorted(re.findall(r"[A-J]", pred)) == sorted(re.findall(r"[A-J]", gold))
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


# The normalisers, under public names for tasks/scorers.py (each benchmark's own rule reuses them).
canonical, arithmetic_value, decimals, option_index, answer_letter = (
    _normalize, _evaluate, _decimals, _choice_index, _answer_letter)
