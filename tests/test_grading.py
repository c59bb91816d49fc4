"""Answer grading and rewards (tasks/grading.py): extraction, matching, reward, robustness.

Each case table is an oracle written by hand: (input, expected). The robustness tests feed the
grader what a policy early in RL really emits -- nothing, megabytes, stray tags, unbalanced braces,
inputs built to make a backtracking regex explode -- and require an answer in bounded time.
Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_grading.py
"""

import random
import time

import pytest

from tasks import grading

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
