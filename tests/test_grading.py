"""Answer grading and rewards (tasks/grading.py) and each benchmark's own rule (tasks/scorers.py).

Each case table is an oracle written by hand: (input, expected). The benchmark tables' verdicts are what the
benchmark's released scorer says for that extracted answer (MathVista calculate_score.py, MATH-V evaluate.py,
mmmu-pro/evaluate.py, VLMEvalKit's DynaMath and LogicVista, We-Math accuracy.py, mathruler), read off their code;
where ours departs (tasks/scorers.py's numbered list), the comment says so. The robustness tests feed the
grader what a policy early in RL really emits -- nothing, megabytes, stray tags, unbalanced braces,
inputs built to make a backtracking regex explode -- and require an answer in bounded time.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_grading.py
"""

import random
import time

import json

import pytest

from tasks import grading, scorers

# --- extraction -----------------------------------------------------------------------------------

EXTRACT_CASES = [
    ("<think>2+2</think><answer>4</answer>", "4"),
    ("<think>x</think>\n<answer>\n  -12.5 \n</answer>\n", "-12.5"),
    # the LAST answer tag wins (a model may quote the format in its reasoning)
    ("<think>I'll write <answer>X</answer> at the end</think><answer>7</answer>", "7"),
    ("<ANSWER>B</ANSWER>", "B"),
    # unclosed final tag (cut off at max_tokens): tolerated
    ("<think>...</think><answer>42", "42"),
    ("<answer>\\boxed{17}</answer>", "17"),
    ("<answer></answer>", None),
    ("the result is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
    ("first \\boxed{1}, corrected: \\boxed{2}", "2"),
    ("nested \\boxed{\\sqrt{\\frac{1}{2}}} ok", "\\sqrt{\\frac{1}{2}}"),
    ("unbalanced last \\boxed{2} then \\boxed{3", "2"),
    ("\\fbox{9}", "9"),
    ("so \\boxed 5", "5"),
    ("The answer is (B).", "B"),
    ("Final answer: C", "C"),
    ("After checking, the answer is 1,234.", "1,234"),
    ("The answer is: -3/4 of the total", "-3/4"),
    ("answer is I think 12", "12"),                 # "I" here is not a choice letter
    ("There are 3 red and 5 blue balls, so 8 in total", "8"),
    ("about 45% of the area", "45%"),
    ("The answer is $\\frac{1}{2}$.", "$\\frac{1}{2}$"),    # the math token, not its first digit
    ("so the answer is 3\\sqrt{3}.", "3\\sqrt{3}"),
    ("**Answer:** B", "B"),                         # markdown
    ("Thus the correct option is D.", "D"),
    ("<answer>The answer is 5.</answer>", "5"),    # a sentence inside the tag
    ("answer is 42 because 3 > 2", "42"),
    ("no number here", None),
    ("", None),
    (None, None),
    (12, None),                                     # not a string: no answer, no exception
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer_cases(text, expected):
    assert grading.extract_answer(text) == expected


# --- matching -------------------------------------------------------------------------------------

MATCH_CASES = [
    # (pred, gold, choices, precision, expected)
    ("42", "42", None, None, True),
    ("042", "42", None, None, True),
    ("+7", "7", None, None, True),
    ("-3", "3", None, None, False),
    ("1,234", "1234", None, None, True),
    ("1,234,567.5", "1234567.5", None, None, True),
    ("1,2", "12", None, None, False),               # a list, not a thousands separator
    ("3.0", "3", None, None, True),
    ("0.5", "1/2", None, None, True),
    ("\\frac{1}{2}", "0.5", None, None, True),
    ("\\dfrac{3}{4}", "0.75", None, None, True),
    ("\\tfrac34", "3/4", None, None, True),
    ("50%", "0.5", None, None, True),
    ("50\\%", "50", None, None, True),
    ("50", "0.5", None, None, False),
    ("1.27", "1.3", None, 1, True),                 # MathVista: rounded to gold's precision
    ("1.36", "1.3", None, 1, False),
    ("1.27", "1.3", None, None, False),
    ("3.46", "2\\sqrt{3}", None, None, True),       # decimal approximation of an exact value
    ("3.5", "2\\sqrt{3}", None, None, False),       # too coarse to count
    ("2\\sqrt{3}", "2 \\sqrt 3", None, None, True),
    ("\\frac{\\sqrt{3}}{2}", "0.866", None, None, True),
    ("4\\pi", "4π", None, None, True),
    ("12.57", "4\\pi", None, None, True),
    ("60^\\circ", "60", None, None, True),
    ("60°", "60", None, None, True),
    ("60 degrees", "60", None, None, True),
    ("5 cm", "5", None, None, True),
    ("5\\text{ cm}^2", "5", None, None, True),
    ("5cm", "5", None, None, True),
    ("4x", "4", None, None, False),                 # x is not a unit
    ("x = 5", "5", None, None, True),
    ("$\\$5$", "5", None, None, True),
    ("\\text{Yes}", "yes", None, None, True),
    ("\\textbf{12}", "12", None, None, True),       # \textbf is not \text + "bf"
    ("\\mathrm{B}", "B", None, None, True),
    ("Yes.", "yes", None, None, True),
    ("no", "yes", None, None, False),
    # multiple choice, letter <-> option text both ways
    ("B", "larger than", ["smaller than", "larger than", "equal to"], None, True),
    ("(B)", "larger than", ["smaller than", "larger than", "equal to"], None, True),
    ("A", "larger than", ["smaller than", "larger than", "equal to"], None, False),
    ("Larger than.", "B", ["smaller than", "larger than", "equal to"], None, True),
    ("b", "B", ["1", "2"], None, True),
    ("B. 2", "B", ["1", "2"], None, True),
    ("2.0", "B", ["1", "2"], None, True),           # numeric option text
    ("2", "A", ["1", "2"], None, False),
    ("E", "A", ["1", "2"], None, False),            # out-of-range letter names no option
    ("(C)", "C", None, None, True),                 # letter gold without the options
    ("I think C", "C", None, None, False),
    # a policy must not match a gold by listing or hedging numbers
    ("2 3", "6", None, None, False),
    ("1 2 3", "123", None, None, False),
    ("5 or 3", "3", None, None, False),
    ("5 or 3", "5", None, None, False),
    ("[1, 2]", "[1,2]", None, None, True),
    # garbage in, False out
    (None, "1", None, None, False),
    ("", "1", None, None, False),
    ("1", "", None, None, False),
    ("9^9^9^9", "1", None, None, False),
    ("1/0", "1", None, None, False),
    ("((((((1", "1", None, None, False),
    ("\\frac{1}{", "1", None, None, False),
    (7, 7, None, None, True),                       # non-string inputs are stringified
]


# The right answers #30 found graded wrong, and the wrong ones that must stay wrong (each gold as the release has it).
ISSUE_CASES = [
    ("m\\angle H = 97", "97", None, None, True),
    ("m∠2 = 56°", "56", None, None, True),
    ("∠2 = 56°", "56", None, None, True),
    ("m\\angle H = 97", "97", ["97", "102", "107", "122"], None, True),          # MathVista pid 5, option text
    ("4π cm", "4πcm", ["2πcm", "4πcm", "6πcm", "8πcm"], None, True),
    ("4\\pi cm", "4πcm", ["2πcm", "4πcm", "6πcm", "8πcm"], None, True),
    ("4\\pi cm", "4\\pi", None, None, True),
    ("d = 1.2 \\mathrm{~m}", "1.2", None, 1, True),
    ("1.2 \\mathrm{~m}", "1.2", None, 1, True),
    ("D", "18", ["9", "12", "18", "18"], None, True),                               # duplicate options: same text
    ("A. 2 B. 4 C. 6 D. 8", "4", ["2", "4", "6", "8"], None, False),               # listing every option
    ("A. 2 B. 4 C. 6 D. 8", "4", None, None, False),
    ("E", "15", ["15", "100", "50", "50"], None, False),                           # no option E on a 4-option row
    ("D, B", "B, D", None, None, True),                                             # LogicVista letter sets
    ("C and A", "A, C", None, None, True),
    ("B", "B, D", None, None, False),
    ("13", "13.0", None, None, True),
    ("6.7", "\\frac { 20 } { 3 }", None, None, False),                            # < 2 decimals of an exact value
    ("6.67", "\\frac { 20 } { 3 }", None, None, True),
    ("113.1", "Area $=113.1 \\mathrm{~cm}^{2}$", None, None, True),               # MathVerse golds with a name
    ("50.27", "Circumference $=50.27 \\mathrm{~cm}$", None, None, True),
    ("118", "118掳T", None, None, True),                                            # mojibake degree, bearing T
    ("315", "315^\\circT", None, None, True),
    ("S 23.5° W", "S 23.5 ^\\circ W", None, None, True),
    ("S 23.5° E", "S 23.5 ^\\circ W", None, None, False),                          # a bearing's letter is no unit
    ("2\\sqrt{221}", "2 \\sqrt { 221 }", None, None, True),                      # Geometry3K option text
    ("3\\sqrt{2}", "3 \\sqrt 2", None, None, True),
    ("x + 1 = 5", "5", None, None, False),                                          # an equation is not its value
    ("YES", "yes", None, None, True),
]


@pytest.mark.parametrize("pred,gold,choices,precision,expected", ISSUE_CASES)
def test_issue_30_grading_cases(pred, gold, choices, precision, expected):
    assert grading.is_correct(pred, gold, choices=choices, precision=precision) is expected


@pytest.mark.parametrize("pred,gold,choices,precision,expected", MATCH_CASES)
def test_is_correct_cases(pred, gold, choices, precision, expected):
    assert grading.is_correct(pred, gold, choices=choices, precision=precision) is expected


def test_grading_case_count_meets_the_issue():
    assert len(EXTRACT_CASES) + len(MATCH_CASES) >= 40


# --- reward ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("response,fmt", [
    ("<think>a</think><answer>1</answer>", 1.0),
    ("  <think>\na\n</think>\n\n<answer> 1 </answer>\n", 1.0),
    ("<think></think><answer>1</answer>", 1.0),        # empty reasoning is still the format
    ("<think>a</think><answer> </answer>", 0.0),       # empty answer is not
    ("<answer>1</answer>", 0.0),
    ("<think>a</think>text<answer>1</answer>", 0.0),   # text between the blocks
    ("<think>a</think><answer>1</answer> and more", 0.0),
    ("<think>a<think>b</think><answer>1</answer>", 0.0),
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),
    ("<answer>1</answer><think>a</think>", 0.0),
    ("<think>a</think><answer>1", 0.0),
    (None, 0.0),
])
def test_format_requires_exact_think_answer_shape(response, fmt):
    assert grading.compute_reward(response, "1")["format"] == fmt


def test_reward_mixes_accuracy_and_format_with_the_weight():
    good = "<think>3+4=7</think><answer>7</answer>"
    assert grading.compute_reward(good, "7") == {"reward": 1.0, "accuracy": 1.0, "format": 1.0}
    wrong = grading.compute_reward("<think>3+4=8</think><answer>8</answer>", "7")
    assert wrong == {"reward": 0.1, "accuracy": 0.0, "format": 1.0}  # 0.9 x 0 + 0.1 x 1: 0.1 itself, exactly
    bare = grading.compute_reward("the answer is 7", "7", format_weight=0.25)
    assert bare == {"reward": 0.75, "accuracy": 1.0, "format": 0.0}   # 0.75 x 1 + 0.25 x 0: exact
    mc = grading.compute_reward("<think>t</think><answer>C</answer>", "equal to",
                             choices=["smaller than", "larger than", "equal to"])
    assert mc["accuracy"] == 1.0
    assert grading.compute_reward("<answer>1.27</answer>", "1.3", precision=1)["accuracy"] == 1.0


# --- robustness: never raise, never hang -----------------------------------------------------------

ADVERSARIAL = [
    "",
    " " * 10,
    "\\boxed{" * 50_000,                                   # 350 kB of unclosed boxes
    "{" * 100_000 + "}" * 99_999,
    "<answer>" * 20_000,
    "</answer><answer>" * 10_000 + "x",
    "<think>" + "</think>" * 20_000 + "<answer>1</answer>",
    "answer is " * 20_000,
    "1," * 100_000 + "5",                                  # thousands-separator bait
    "1" * 1_000_000,                                       # 1 MB digit string
    "a" * 1_000_000 + "!",                                 # classic (a+)+$ bait
    "<answer>" + "\\frac{" * 5_000 + "</answer>",
    "<answer>" + "(" * 5_000 + "1" + ")" * 5_000 + "</answer>",
    "<answer>" + "9" * 5_000 + "</answer>",
    "数学 答案是 (B) ✓ \u200b\x00 \ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    "\ud800<answer>1\udfff</answer>",                     # lone surrogates (invalid UTF-16)
    "\\boxed{\\text{\\frac{\\sqrt{}}}}",
    "$$$$\\(\\)\\[\\]^\\circ°%%%",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=[f"adv{i}" for i in range(len(ADVERSARIAL))])
def test_grader_survives_adversarial_text_quickly(text):
    start = time.perf_counter()
    pred = grading.extract_answer(text)
    assert pred is None or isinstance(pred, str)
    for gold, choices in (("1", None), ("B", ["x", "y"]), ("\\frac{1}{2}", None)):
        # the unguarded core too: a fallback `except` must not be what keeps it alive
        assert grading._is_correct(pred, gold, choices) in (True, False)
        assert grading._is_correct(text, gold, choices) in (True, False)
        out = grading.compute_reward(text, gold, choices=choices)
        assert set(out) == {"reward", "accuracy", "format"} and 0.0 <= out["reward"] <= 1.0
    assert time.perf_counter() - start < 3.0


def test_grader_survives_random_fragments():
    # Random soup of the tokens the grader looks for: exercises odd orderings no one writes by hand.
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "{", "}", "\\frac", "\\sqrt",
              "answer is", " (B)", "1,234", "-", ".", "/", "%", "^", "\\circ", "pi", "3", " ", "\n", "é"]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        pred = grading._extract(text)
        assert pred is None or isinstance(pred, str)
        grading._is_correct(pred, "3", None, rng.choice([None, 1]))
        grading._is_correct(pred, "A", ["3", "pi"])
        grading.format_ok(text)


# --- docstring examples are tests too --------------------------------------------------------------

@pytest.mark.parametrize("fn", ["extract_answer", "is_correct", "compute_reward", "format_ok",
                                "_normalize", "_evaluate"])
def test_docstring_examples(doctest_examples, fn):
    assert doctest_examples(grading, [fn]) > 0


# --- each benchmark's own rule (tasks/scorers.py) --------------------------------------------------------------------

def row(source, answer, choices=(), **fields):
    meta = fields.pop("meta", {})
    return {"source": source, "answer": answer, "choices": list(choices), "meta": json.dumps(meta), **fields}


def mathvista(answer, choices=None, kind="text", precision=None, unit=""):
    return row("mathvista", answer, choices or (), question_type="multi_choice" if choices else "free_form",
               answer_type=kind, precision=precision, unit=unit)


OPTIONS_4PI = ["2πcm", "4πcm", "6πcm", "8πcm"]
MMMU_OPTIONS = [str(x) for x in range(2, 21, 2)]
SCORER_CASES = [
    # MathVista: normalize_extracted_answer, then string equality with the gold (option TEXT for multi_choice)
    ("4π cm", mathvista("4πcm", OPTIONS_4PI), True),                 # nearest option by Levenshtein (distance 1)
    ("B", mathvista("4πcm", OPTIONS_4PI), True),
    ("(B) 4πcm", mathvista("4πcm", OPTIONS_4PI), True),              # "(X)" names the letter
    ("b", mathvista("4πcm", OPTIONS_4PI), False),                    # lower case is no letter: Levenshtein -> 2πcm
    ("B.", mathvista("4πcm", OPTIONS_4PI), True),                    # ours (departure 1): official -> 2πcm
    ("m\\angle H = 97", mathvista("97", ["97", "102", "107", "122"]), True),
    ("A. 2 B. 4 C. 6 D. 8", mathvista("4", ["2", "4", "6", "8"]), False),
    ("145", mathvista("145°", ["145°", "35°", "55°", "125°"]), True),
    ("E", mathvista("15", ["15", "100", "50", "50"]), True),         # no E: Levenshtein ties -> the first option
    ("D", mathvista("18", ["9", "12", "18", "18"]), True),
    ("1.20", mathvista("1.2", kind="float", precision=1), True),
    ("1.25", mathvista("1.2", kind="float", precision=1), True),      # Python's round(1.25, 1) = 1.2
    ("1.15", mathvista("1.2", kind="float", precision=1), False),     # round(1.15, 1) = 1.1 (binary 1.15)
    ("d = 1.2 \\mathrm{~m}", mathvista("1.2", kind="float", precision=1), False),  # float() fails on the unit
    ("0.333", mathvista("0.33", kind="float", precision=2), True),
    ("5.7", mathvista("5", kind="integer"), True),                    # int(float()) truncates
    ("1,000", mathvista("1000", kind="integer"), False),
    ("[2014,2016]", mathvista("[2014, 2016]", kind="list"), False),   # lists compare as written
    ("[2014, 2016]", mathvista("[2014, 2016]", kind="list"), True),
    ("12 years", mathvista("12", kind="integer", unit="years"), True),  # ours: the row's own unit dropped
    # MathVerse: letters or an option's text; free-form by value within half a unit of the gold's last decimal
    ("D", row("mathverse", "D", ["40°", "60°", "120°", "140°"], question_type="multi_choice"), True),
    ("140°", row("mathverse", "D", ["40°", "60°", "120°", "140°"], question_type="multi_choice"), True),
    ("(D)", row("mathverse", "D", question_type="multi_choice"), True),   # Vision Only: no options, a letter
    ("B:2√{3}", row("mathverse", "C", question_type="multi_choice"), False),
    ("C", row("mathverse", "(C)", question_type="multi_choice"), True),
    ("false", row("mathverse", "False", ["True", "False"], question_type="multi_choice"), True),
    ("50.27", row("mathverse", "Circumference $=50.27 \\mathrm{~cm}$", question_type="free_form"), True),
    ("50.268", row("mathverse", "Circumference $=50.27 \\mathrm{~cm}$", question_type="free_form"), True),
    ("50.3", row("mathverse", "Circumference $=50.27 \\mathrm{~cm}$", question_type="free_form"), False),
    ("113.1", row("mathverse", "Area $=113.1 \\mathrm{~cm}^{2}$", question_type="free_form"), True),
    ("118°", row("mathverse", "118掳T", question_type="free_form"), True),
    ("14.4", row("mathverse", "14", question_type="free_form"), False),
    ("(-2, 1)", row("mathverse", "(-2,1]", question_type="free_form"), False),
    # DynaMath (VLMEvalKit): float within 0.001; one letter; text as a substring of the gold
    ("2.094", row("dynamath", "2.0944", answer_type="float"), True),
    ("2.1", row("dynamath", "2.0944", answer_type="float"), False),
    ("2π/3", row("dynamath", "2.0944", answer_type="float"), False),
    ("0.667π", row("dynamath", "2.0944", answer_type="float"), False),   # 0.667 pi = 2.09544: off by 0.00104
    ("(B) no", row("dynamath", "B", answer_type="multiple choice"), True),
    ("B or C", row("dynamath", "B", answer_type="multiple choice"), True),  # unparsed: B opens the answer
    ("may", row("dynamath", "May", answer_type="text"), True),
    ("y=-3", row("dynamath", "y = -3", answer_type="text"), False),
    ("5:00", row("dynamath", "5:0", answer_type="text"), False),
    # MathVision: find_math_answer, then equal text or values equal to 2 decimals, vs the letter or its option
    ("\\boxed{D}", row("mathvision", "D", meta={"options": list("ABCDE")}), True),
    ("the answer is D.", row("mathvision", "D", meta={"options": list("ABCDE")}), True),
    ("0.5", row("mathvision", "\\frac{1}{2}"), True),
    ("3.46", row("mathvision", "2\\sqrt{3}"), True),
    ("3.5", row("mathvision", "2\\sqrt{3}"), False),
    ("45^\\circ", row("mathvision", "45"), True),
    ("x=6", row("mathvision", "6"), True),
    ("red", row("mathvision", "C", meta={"options": ["blue", "green", "red", "Yellow", "?"]}), True),
    # We-Math: the first character after the last "Answer", > < : . removed
    ("B", row("wemath", "B"), True), ("B. 400, 300", row("wemath", "B"), True),
    ("Answer: B", row("wemath", "B"), True), ("(B)", row("wemath", "B"), False),
    # LogicVista: sorted, lower-cased letter sets
    ("D, B", row("logicvista", "B, D"), True), ("BD", row("logicvista", "B, D"), True),
    ("B", row("logicvista", "B, D"), False), ("3", row("logicvista", "3"), True), ("(C)", row("logicvista", "C"), True),
    # MMMU-Pro: parse_multi_choice_response (no random guess: departure 2)
    ("Answer: B", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), True),
    ("The answer is (B).", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), True),
    ("B", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), True),
    ("I think B is right", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), True),
    ("Answer: $B$", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), True),
    ("Answer: **B**", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), True),
    ("Answer: B or C", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), False),   # two letters: C, named last
    ("A. 2 B. 4 C. 6 D. 8", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), False),
    ("4", row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), False),                # official: a random guess
    # mathruler (Geometry3K, ViRL39K as EasyR1 / verl grade them): the option TEXT, exact values
    ("48", row("geometry3k", "48"), True), ("2\\sqrt{221}", row("geometry3k", "2 \\sqrt { 221 }"), True),
    ("29.73", row("geometry3k", "2 \\sqrt { 221 }"), False), ("13", row("geometry3k", "13.0"), True),
    ("20/3", row("geometry3k", "\\frac { 20 } { 3 }"), True), ("6.67", row("geometry3k", "\\frac { 20 } { 3 }"), False),
    ("B", row("geometry3k", "\\frac { 20 } { 3 }"), False), ("22/3", row("geometry3k", "22 / 3"), True),
    ("3/4", row("virl39k", "\\frac{3}{4}"), True), ("0.75", row("virl39k", "\\frac{3}{4}"), True),
    ("6/8", row("virl39k", "\\frac{3}{4}"), False),                 # two fractions compare as written
    ("3/4", row("virl39k", "\\frac{6}{8}"), False),
    ("17", row("virl39k", "17^\\circ"), True), ("17.5", row("virl39k", "17"), False),
    # MMK12 (a GPT judge of the final result): options by letter or text
    ("B", row("mmk12", "B", ["I", "II", "III", "IV"]), True), ("II", row("mmk12", "B", ["I", "II", "III", "IV"]), True),
    (None, row("mmk12", "B", ["I", "II"]), False),
]


@pytest.mark.parametrize("pred,bench_row,expected", SCORER_CASES,
                         ids=[f"{r['source']}-{i}" for i, (_, r, _) in enumerate(SCORER_CASES)])
def test_benchmark_scorers_agree_with_the_released_rules(pred, bench_row, expected):
    assert scorers.score(bench_row, pred) is expected


def test_scorers_never_raise_on_hostile_answers():
    for text in ADVERSARIAL[:8] + ["\\boxed{" * 3, "Answer:", "π" * 50, "(" * 999]:
        for bench_row in (mathvista("4πcm", OPTIONS_4PI), mathvista("1.2", kind="float", precision=1),
                          row("mathvision", "D", meta={"options": list("ABCDE")}), row("dynamath", "2", answer_type="float"),
                          row("mmmu_pro", "B", meta={"options": MMMU_OPTIONS}), row("mathverse", "1", question_type="free_form")):
            assert scorers.score(bench_row, text[:5000]) in (True, False)


def test_group_metrics_worst_case_and_four_dimensions_by_hand():
    # DynaMath: seed 1 right in both variants, seed 2 right in one: average 3/4, worst case 1/2
    metas = [{"qid": "1"}, {"qid": "2"}, {"qid": "1"}, {"qid": "2"}]
    assert scorers.group_metrics("dynamath", metas, [1, 1, 1, 0]) == {"worst_case": 0.5, "seeds": 2}
    # We-Math: problem 1 (steps right, whole right) = CM; problem 2 (a step wrong, whole wrong) = IK;
    # problem 3 (steps right, whole wrong) = IG: strict score (3 - 0.5 - 0 - 1) / 3 = 0.5
    metas = [{"group": g, "key": k} for g in "123" for k in ("2steps_1", "2steps_2", "2steps_multi")]
    verdicts = [1, 1, 1, 1, 0, 0, 1, 1, 0]
    four = scorers.group_metrics("wemath", metas, verdicts)
    assert (four["score_strict"], four["ik"], four["ig"], four["cm_strict"], four["problems"]) == (0.5, 1, 1, 1, 3)
    versions = scorers.group_metrics("mathverse", [{"version": "Vision Only"}, {"version": "Text Lite"},
                                                  {"version": "Vision Only"}], [1, 0, 0])
    assert versions == {"Text Lite": 0.0, "Vision Only": 0.5}


# Whole responses as a policy writes them: our extraction, then our verdict and the benchmark's own.
RESPONSES = [
    # (response, row, ours, official)
    ("<think>Angle H is supplementary to 83, so 97.</think><answer>m\\angle H = 97</answer>",
     mathvista("97", ["97", "102", "107", "122"]), True, True),
    ("<think>The circumference is 2 pi r with r = 2.</think><answer>4π cm</answer>", mathvista("4πcm", OPTIONS_4PI),
     True, True),
    ("<think>d = F / k</think><answer>d = 1.2 \\mathrm{~m}</answer>", mathvista("1.2", kind="float", precision=1),
     True, False),          # MathVista's float() cannot read a unit; its GPT extractor would have dropped it
    ("<think>The cup shows 1000 g.</think><answer>1000</answer>", mathvista("1000", kind="integer", unit="g"), True, True),
    ("<think>Reading the graph...</think><answer>\\boxed{5.7}</answer>", mathvista("5", kind="integer"), False, True),
    ("<think>All four are listed.</think><answer>A. 2 B. 4 C. 6 D. 8</answer>", mathvista("4", ["2", "4", "6", "8"]),
     False, False),
    ("<think>CED = 180 - 40 = 140</think><answer>D</answer>",
     row("mathverse", "D", ["40°", "60°", "120°", "140°"], question_type="multi_choice"), True, True),
    ("<think>Read the question in the image.</think><answer>(D)</answer>",
     row("mathverse", "D", question_type="multi_choice"), True, True),       # Vision Only: no options to map
    ("<think>A = pi r^2 / ...</think><answer>113.1 cm^2</answer>",
     row("mathverse", "Area $=113.1 \\mathrm{~cm}^{2}$", question_type="free_form"), True, True),
    ("<think>The bearing...</think><answer>118°T</answer>", row("mathverse", "118掳T", question_type="free_form"),
     True, True),
    ("<think>period 2pi/3</think><answer>2.094</answer>", row("dynamath", "2.0944", answer_type="float"), False, True),
    # (ours wants every decimal of a decimal gold; DynaMath allows 0.001 -- its prompt asks for three decimals)
    ("<think>It repeats.</think><answer>(A) Yes</answer>", row("dynamath", "A", answer_type="multiple choice",
                                                               choices=["Yes", "No"]), True, True),
    ("<think>...</think><answer>\\boxed{2\\sqrt{3}}</answer>", row("mathvision", "2\\sqrt{3}"), True, True),
    ("<think>...</think><answer>3.46</answer>", row("mathvision", "2\\sqrt{3}"), True, True),
    ("Let me check each net. The answer is D.", row("mathvision", "D", meta={"options": list("ABCDE")}), True, True),
    ("<think>radius 4</think><answer>B</answer>", row("wemath", "B", ["3", "4", "5", "6", "No correct answer"]),
     True, True),
    ("<think>the second and the fourth</think><answer>D, B</answer>", row("logicvista", "B, D"), True, True),
    ("<think>...</think><answer>Answer: B</answer>", row("mmmu_pro", "B", MMMU_OPTIONS, meta={"options": MMMU_OPTIONS}),
     True, True),
    ("<think>...</think><answer>4</answer>", row("mmmu_pro", "B", MMMU_OPTIONS, meta={"options": MMMU_OPTIONS}),
     True, False),          # ours maps the option text 4 to B; MMMU-Pro's parser finds no letter (random guess)
    ("<think>PT = 20/3</think><answer>\\frac{20}{3}</answer>", row("geometry3k", "\\frac { 20 } { 3 }"), True, True),
    ("<think>PT is about 6.67</think><answer>6.67</answer>", row("geometry3k", "\\frac { 20 } { 3 }"), True, False),
    ("<think>...</think><answer>\\boxed{B}</answer>", row("virl39k", "B"), True, True),
]


@pytest.mark.parametrize("response,bench_row,ours,official", RESPONSES,
                         ids=[f"{r['source']}-{i}" for i, (_, r, _, _) in enumerate(RESPONSES)])
def test_whole_responses_graded_ours_and_by_the_benchmark(response, bench_row, ours, official):
    extracted = grading.extract_answer(response)
    assert grading.is_correct(extracted, bench_row["answer"], bench_row.get("choices"), bench_row.get("precision")) is ours
    assert scorers.score(bench_row, extracted) is official
