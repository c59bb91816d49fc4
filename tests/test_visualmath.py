"""Synthetic VisualMath (tasks/visualmath.py): determinism, schema, knobs, and perception spans."""

import random

import pytest

from tasks import visualmath

SYNTHETIC = ["slots_example", "make_slots", "grid_example", "make_grid", "v3_example", "sum_chain", "read_spans",
             "read_values", "read_right", "locate_perception"]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_docstring_examples(doctest_examples, name):
    assert doctest_examples(visualmath, [name]) > 0


def test_same_seed_same_dataset_other_seed_other_dataset():
    a, b, c = (visualmath.make_slots(20, seed=s) for s in (7, 7, 8))
    assert a["response"] == b["response"] and a["question"] == b["question"]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a["image"], b["image"]))  # pixel-identical
    assert a["response"] != c["response"]
    assert a["id"] != c["id"] and len(set(a["id"])) == 20


def test_unified_schema():
    ds = visualmath.make_slots(2, seed=0)
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
    for ex in visualmath.make_slots(25, seed=1, **knobs):
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
    ex = visualmath.make_slots(1, seed=5, noise=0.0)[0]
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
        tile = visualmath._render_number(str(d), (0, 0, 0), 2)
        glyphs[d] = tile.getchannel("A").tobytes()
    assert len(set(glyphs.values())) == 10


def test_perception_spans_point_at_the_values():
    for ex in visualmath.make_slots(30, seed=2, n_numbers=3, digits=2, ops=("+", "-")):
        spans = visualmath.locate_perception(ex["response"], ex["perception"])
        assert [ex["response"][s:e] for s, e in spans] == ex["perception"]
        assert all(s >= len("<think>") for s, _ in spans)  # found inside the reasoning, before the answer


def test_locate_perception_on_model_text():
    text = "<think>I see 12 and 5, so 12+5=17</think><answer>17</answer>"
    assert visualmath.locate_perception(text, ["12", "5"]) == [(13, 15), (20, 21)]
    assert visualmath.locate_perception("", ["3"]) == []
    assert visualmath.locate_perception("no digits", []) == []
    assert visualmath.locate_perception("x=31", ["3"]) == []  # not a whole number there


def test_bad_knobs_raise_clear_errors():
    with pytest.raises(ValueError, match="ops"):
        visualmath.make_slots(1, ops=("/",))
    with pytest.raises(ValueError, match="layout"):
        visualmath.make_slots(1, layout="spiral")
    with pytest.raises(ValueError, match="shapes"):
        visualmath.make_slots(1, shapes=9)  # the panel has 8 places


def test_empty_dataset():
    assert len(visualmath.make_slots(0)) == 0


def test_example_generator_is_pure_in_its_rng():
    a = visualmath.slots_example(random.Random(3))
    b = visualmath.slots_example(random.Random(3))
    assert a["response"] == b["response"] and a["image"].tobytes() == b["image"].tobytes()


def test_shapes_knob_adds_a_countable_operand():
    """Oracle: count the 14-px grid cells of the right panel that hold ink; it must equal n."""
    for ex in visualmath.make_slots(20, seed=6, shapes=8, ops=("+", "*"), noise=0.0):
        img = ex["image"]
        assert img.size == (56 + 56, 28) and len(ex["perception"]) == 3
        assert "number of shapes" in ex["question"] and ex["question"].endswith("n?")
        bg = img.getpixel((0, 0))
        filled = sum(
            sum(img.getpixel((56 + gx * 14 + x, gy * 14 + y)) != bg for x in range(14) for y in range(14)) > 20
            for gx in range(4) for gy in range(2))
        assert filled == int(ex["perception"][-1]) >= 1


def test_default_task_does_not_depend_on_the_shapes_knob():
    a, b = visualmath.make_slots(5, seed=9), visualmath.make_slots(5, seed=9, shapes=0)
    assert a["response"] == b["response"] and all(x.tobytes() == y.tobytes() for x, y in zip(a["image"], b["image"]))


# --- v2: the grid (the default task) -----------------------------------------------------------------

def _cell_has_ink(img, r, c, cell=28, min_pixels=20):
    bg = img.getpixel((0, 0))
    return sum(img.getpixel((c * cell + x, r * cell + y)) != bg for x in range(cell) for y in range(cell)) > min_pixels


def test_grid_is_sixteen_cells_with_digits_shapes_and_empty_cells():
    """Oracle: count the inked 28-px cells (one merged vision token each) of noise-free grids."""
    for ex in visualmath.make_grid(20, seed=3, noise=0.0):
        img = ex["image"]
        assert img.size == (112, 112) and len(ex["perception"]) == 4
        inked = sum(_cell_has_ink(img, r, c) for r in range(4) for c in range(4))
        assert inked == 4 + 3  # four digits, three distractor shapes, nine empty cells


def test_grid_reference_reads_the_digits_in_reading_order():
    """The perception values are the digits in raster order of their cells: re-render each cell's digit alone
    and compare pixels, an oracle independent of the generator's bookkeeping."""
    for ex in visualmath.make_grid(10, seed=4, noise=0.0, n_shapes=0):
        img = ex["image"]
        cells = [(r, c) for r in range(4) for c in range(4) if _cell_has_ink(img, r, c)]
        fg = next(img.getpixel((x, y)) for x in range(112) for y in range(112) if img.getpixel((x, y)) != img.getpixel((0, 0)))
        for (r, c), value in zip(cells, ex["perception"]):
            tile = visualmath._render_number(value, fg, 2)
            x0, y0 = c * 28 + (28 - tile.width) // 2, r * 28 + (28 - tile.height) // 2
            alpha = tile.getchannel("A")
            assert all(img.getpixel((x0 + x, y0 + y)) == fg for x in range(tile.width) for y in range(tile.height)
                       if alpha.getpixel((x, y)) == 255), (ex["id"], value)
        assert ex["response"] == visualmath.sum_chain([int(v) for v in ex["perception"]])[0]
        assert int(ex["answer"]) == sum(int(v) for v in ex["perception"])


def test_grid_responses_are_long_enough_and_interleave_reading_and_arithmetic():
    ex = visualmath.make_grid(1, seed=0)[0]
    think = ex["response"].split("<think>")[1].split("</think>")[0]
    steps = think.split(", ")
    assert len(steps) == 3 and all("=" in s for s in steps)  # three additions, each a read digit + a carried sum
    assert visualmath.read_values(ex["response"]) == ex["perception"]


def test_teacher_slips_change_only_the_response_and_stay_consistent():
    for i in range(40):
        clean = visualmath.grid_example(random.Random(i))
        noisy = visualmath.grid_example(random.Random(i), slip=1.0)   # every 1, 3, 5 is misread
        assert clean["image"].tobytes() == noisy["image"].tobytes()
        assert (clean["question"], clean["answer"], clean["perception"]) == \
            (noisy["question"], noisy["answer"], noisy["perception"])
        seen = [str(visualmath.TEACHER_SLIPS.get(int(v), int(v))) for v in clean["perception"]]
        assert visualmath.read_values(noisy["response"]) == seen
        assert noisy["response"] == visualmath.sum_chain([int(v) for v in seen])[0]  # the chain adds what was read
        # slips only ever raise a value, so a misread grid never reaches the true sum by luck
        assert (noisy["response"] == clean["response"]) == (seen == clean["perception"])


def test_teacher_slip_rate_matches_its_probability():
    rng, slipped, total = random.Random(0), 0, 0
    for _ in range(2000):
        ex = visualmath.grid_example(rng, slip=0.7)
        for true, read in zip(ex["perception"], visualmath.read_values(ex["response"])):
            if int(true) in visualmath.TEACHER_SLIPS:
                total, slipped = total + 1, slipped + (true != read)
    assert abs(slipped / total - 0.7) < 0.03, slipped / total


def test_read_right_and_lucky_guesses():
    perception = ["3", "5", "2"]
    assert visualmath.read_right("<think>3+5=8, 8+2=10</think><answer>10</answer>", perception)
    assert visualmath.read_right("<think>5+3=8, 8+2=10</think><answer>10</answer>", perception)  # order is free
    assert not visualmath.read_right("<think>4+4=8, 8+2=10</think><answer>10</answer>", perception)  # lucky sum
    assert not visualmath.read_right("<think>3+5=8</think><answer>10</answer>", perception)  # a digit missing
    assert not visualmath.read_right("<answer>10</answer>", perception)                      # no chain at all
    assert visualmath.read_values("<think>3+5, 8+2</think>") is None                        # steps without "="
    assert visualmath.read_values("<think>" + "1+" * 5000 + "</think>") is None             # bounded work


def test_read_spans_are_the_read_digits_not_the_carried_sums():
    text = "<think>3+5=8, 8+8=16, 16+1=17</think><answer>17</answer>"
    assert [text[a:b] for a, b in visualmath.read_spans(text)] == ["3", "5", "8", "1"]
    assert [a for a, _ in visualmath.read_spans(text)] == [7, 9, 16, 25]


def test_grid_bad_knobs_and_unknown_task():
    with pytest.raises(ValueError, match="n_digits"):
        visualmath.make_grid(1, n_digits=12, n_shapes=8)
    with pytest.raises(ValueError, match="slip"):
        visualmath.grid_example(random.Random(0), slip=1.5)
    with pytest.raises(ValueError, match="visualmath-v1"):
        visualmath.make("visualmath-v4", 1)
    assert len(visualmath.make("visualmath", 2)) == 2 and visualmath.make("visualmath-v1", 2)[0]["image"].size == (56, 28)


# --- the rows are plain (no `datasets` needed), and what a datasets.Dataset made of them -----------------------

@pytest.mark.parametrize("name", visualmath.TASKS)
def test_rows_are_what_a_datasets_dataset_gave(name):
    """Before the synthetic rows were plain, they were a datasets.Dataset in the unified schema: each image went
    to PNG and back, the values through the schema's types. The plain rows must be those rows -- same order, same
    values, the same pixels in the same mode -- so train.py, eval.py and models/tiny.py see the same data."""
    datasets = pytest.importorskip("datasets")
    from tasks import benchmarks
    rows = visualmath.make(name, 6, seed=4)
    dataset = datasets.Dataset.from_dict({k: rows[k] for k in benchmarks.COLUMNS}, features=benchmarks.UNIFIED_FEATURES)
    assert rows.column_names == dataset.column_names and len(rows) == len(dataset) == 6
    for ours, theirs in zip(rows, dataset):
        assert list(ours) == list(theirs)  # the columns, in the schema's order
        image, decoded = ours.pop("image"), theirs.pop("image")
        assert ours == theirs and ours["precision"] is None and ours["choices"] == []
        assert (image.mode, image.size, image.tobytes()) == (decoded.mode, decoded.size, decoded.tobytes())


def test_rows_hand_out_copies():
    rows = visualmath.make("visualmath", 2, seed=0)
    row = rows[0]
    row["answer"] = "changed"
    next(iter(rows))["question"] = "changed"
    assert rows[0]["answer"] != "changed" and rows["question"][0] != "changed"
    with pytest.raises(KeyError, match="no column 'images'"):
        rows["images"]
