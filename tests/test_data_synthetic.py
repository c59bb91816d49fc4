"""Synthetic VisualMath (data.py §Synthetic): determinism, schema, knobs, and perception spans."""

import random

import pytest

import data

SYNTHETIC = ["visualmath_example", "make_visualmath", "locate_perception"]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_docstring_examples(doctest_examples, name):
    assert doctest_examples(data, [name]) > 0


def test_same_seed_same_dataset_other_seed_other_dataset():
    a, b, c = (data.make_visualmath(20, seed=s) for s in (7, 7, 8))
    assert a["response"] == b["response"] and a["question"] == b["question"]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a["image"], b["image"]))  # pixel-identical
    assert a["response"] != c["response"]
    assert a["id"] != c["id"] and len(set(a["id"])) == 20


def test_unified_schema():
    ds = data.make_visualmath(2, seed=0)
    assert set(ds.column_names) == {"id", "image", "question", "answer", "choices", "perception", "response",
                                    "precision", "unit", "source"}
    ex = ds[0]
    assert ex["image"].mode == "RGB" and ex["choices"] == [] and ex["precision"] is None and ex["unit"] == ""
    assert int(ex["answer"]) == sum(int(v) for v in ex["perception"])  # default task: a + b


@pytest.mark.parametrize("knobs", [
    dict(n_numbers=3, digits=2, ops=("+", "-", "*")),
    dict(n_numbers=1, digits=3),
    dict(n_numbers=4, digits=1, ops=("-",), layout="jitter", noise=0.0),
    dict(n_numbers=2, digits=1, cell=40),
])
def test_answer_is_the_expression_over_the_perceived_values(knobs):
    for ex in data.make_visualmath(25, seed=1, **knobs):
        values = ex["perception"]
        assert len(values) == knobs["n_numbers"]
        assert all(len(v) == knobs["digits"] for v in values)  # digit count knob (no leading zeros)
        think = ex["response"].split("<think>")[1].split("</think>")[0]
        expr, result = think.rsplit("=", 1)
        assert result == ex["answer"] and ex["response"].endswith(f"<answer>{ex['answer']}</answer>")
        # the expression uses exactly the perceived values in order, joined by allowed operators
        ops = [c for c in expr[1:] if c in "+-*"]
        assert set(ops) <= set(knobs.get("ops", ("+",)))
        assert expr.replace("*", "+").replace("-", "+").split("+") == values
        assert int(ex["answer"]) == _eval_precedence(values, ops)


def _eval_precedence(values, ops):
    """Independent oracle: * before + and -, then left to right."""
    terms, signs, current = [], ["+"], int(values[0])
    for op, v in zip(ops, values[1:]):
        if op == "*":
            current *= int(v)
        else:
            terms.append(current)
            signs.append(op)
            current = int(v)
    terms.append(current)
    return sum(t if s == "+" else -t for s, t in zip(signs, terms))


def test_fixed_layout_puts_each_number_in_its_slot():
    """Default 56x28 image: ink of number i lies inside slot i (x in [28 i, 28 i + 28))."""
    ex = data.make_visualmath(1, seed=5, noise=0.0)[0]
    img = ex["image"]
    assert img.size == (56, 28)
    bg = img.getpixel((0, 0))
    for slot in range(2):
        ink = [(x, y) for x in range(slot * 28, slot * 28 + 28) for y in range(28) if img.getpixel((x, y)) != bg]
        assert ink, f"slot {slot} is empty"
        assert min(x for x, _ in ink) > slot * 28 and max(x for x, _ in ink) < slot * 28 + 27  # margin


def test_digits_are_distinguishable():
    """Each digit renders to its own glyph (the task is solvable by reading)."""
    glyphs = {}
    for d in range(10):
        tile = data._render_number(str(d), (0, 0, 0), 2)
        glyphs[d] = tile.getchannel("A").tobytes()
    assert len(set(glyphs.values())) == 10


def test_perception_spans_point_at_the_values():
    for ex in data.make_visualmath(30, seed=2, n_numbers=3, digits=2, ops=("+", "-")):
        spans = data.locate_perception(ex["response"], ex["perception"])
        assert [ex["response"][s:e] for s, e in spans] == ex["perception"]
        assert all(s >= len("<think>") for s, _ in spans)  # found inside the reasoning, before the answer


def test_locate_perception_on_model_text():
    text = "<think>I see 12 and 5, so 12+5=17</think><answer>17</answer>"
    assert data.locate_perception(text, ["12", "5"]) == [(13, 15), (20, 21)]
    assert data.locate_perception("", ["3"]) == []
    assert data.locate_perception("no digits", []) == []
    assert data.locate_perception("x=31", ["3"]) == []  # not a whole number there


def test_bad_knobs_raise_clear_errors():
    with pytest.raises(ValueError, match="ops"):
        data.make_visualmath(1, ops=("/",))
    with pytest.raises(ValueError, match="layout"):
        data.make_visualmath(1, layout="spiral")
    with pytest.raises(ValueError, match="shapes"):
        data.make_visualmath(1, shapes=9)  # the panel has 8 places


def test_empty_dataset():
    assert len(data.make_visualmath(0)) == 0


def test_example_generator_is_pure_in_its_rng():
    a = data.visualmath_example(random.Random(3))
    b = data.visualmath_example(random.Random(3))
    assert a["response"] == b["response"] and a["image"].tobytes() == b["image"].tobytes()


def test_shapes_knob_adds_a_countable_operand():
    """Oracle: count the 14-px grid cells of the right panel that hold ink; it must equal n."""
    for ex in data.make_visualmath(20, seed=6, shapes=8, ops=("+", "*"), noise=0.0):
        img = ex["image"]
        assert img.size == (56 + 56, 28) and len(ex["perception"]) == 3
        assert "number of shapes" in ex["question"] and ex["question"].endswith("n?")
        bg = img.getpixel((0, 0))
        filled = sum(
            sum(img.getpixel((56 + gx * 14 + x, gy * 14 + y)) != bg for x in range(14) for y in range(14)) > 20
            for gx in range(4) for gy in range(2))
        assert filled == int(ex["perception"][-1]) >= 1


def test_default_task_does_not_depend_on_the_shapes_knob():
    a, b = data.make_visualmath(5, seed=9), data.make_visualmath(5, seed=9, shapes=0)
    assert a["response"] == b["response"] and all(x.tobytes() == y.tobytes() for x, y in zip(a["image"], b["image"]))
