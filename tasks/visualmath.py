"""VisualMath: synthetic visual arithmetic whose perception tokens are known, so anchor precision can be measured.

An image shows digits; the question asks for arithmetic over them; the answer is an integer. What must be
*read* off the image (the `perception` values) is known exactly, so we can check whether the tokens a
model writes for them are the "anchor" tokens that attend to the image (DESIGN §5 q2), and whether a
rewarded answer was read right or guessed (the lucky-guess share, `read_right`).

Three tasks, one schema (benchmarks.COLUMNS, the loaders'), as plain rows: `Rows`, no `datasets` needed:

    visualmath      (v2, the default) a 4x4 grid of 28-px cells = 16 merged Qwen2.5-VL vision tokens.
                    4 cells hold a digit, 3 hold a coloured shape (distractors), the rest are empty.
                    Q: "The grid shows four digits among shapes. Add them up in reading order ..."
                    A: <think>3+5=8, 8+2=10, 10+7=17</think><answer>17</answer>      (~27 tokens)
                    perception = [3, 5, 2, 7]: the read digits are interleaved with the running sums
                    (computed from the text), so 4 of ~27 response tokens need the image (~15%).
    visualmath-v1   (today's named option) two one-digit numbers in fixed 28-px slots, 2 vision tokens,
                    "What is a + b?", <think>3+4=7</think><answer>7</answer>          (~12 tokens)
    visualmath-v3   v2's grid, question and answer; the chain lists the digits it reads, computes with copies
                    of them and wraps that in free-form filler and a useless shape description (tasks/chains.py):
                    <think>Okay. I see 3, 5, 2, 7. There is a red circle. Adding up: 3+5=8; then ...
                    perception = 4 of ~54 tokens (~7%); -fixed (no filler noise) and -fork (a strategy that
                    matters) are its controls

The teacher (SFT only, models/tiny.py). `grid_example(..., slip=p)` writes the reference response of an
imperfect annotator: a digit in TEACHER_SLIPS (1, 3, 5) is read as its look-alike (7, 8, 6) with
probability p, and the chain is then computed from what was read, consistently. A model trained to
convergence on these responses learns the teacher's reading as a *calibrated probability* -- with p = 0.7
it writes "8" for a 3 seven times in ten -- so its skill is set by the data, not by when SFT stopped or by
one machine's float path. The dataset rows (RL, eval) always hold the true reference. Only the reward
can teach the model to read 1, 3 and 5 right: the perception tokens are exactly where RL must move credit.

Why a sum with a consistent chain makes luck rare: every slip raises a value (1->7, 3->8, 5->6), so two
slips never cancel, and a chain that reads wrong adds up to a wrong sum. `read_right` checks the values a
response read (`read_values`: the operands of its <think> chain) against the perception values as a
multiset (order does not change a sum); accuracy 1 with a wrong reading is a lucky guess.

Where we chose (each a knob): the grid size (4: the fewest cells with >= 16 tokens), the slip set and
probability (models/tiny.py: 0.7, so greedy decoding keeps the teacher's reading and sampling finds the true one
3 times in 10), 4 digits (4 perception tokens of ~27, near the paper's ~15% anchors), 3 shapes. Digits are
Pillow's built-in bitmap font (no font files), scaled x2 with nearest-neighbour so strokes stay crisp;
background, ink and a little pixel noise vary so that no two images are identical.

Run: `python -m pytest -q tests/test_visualmath.py`. Look at one: `python -c "import visualmath as v;
v.make('visualmath', 1)[0]['image'].resize((448, 448)).show()"`.
"""

import random
import re

import PIL.Image
from PIL import ImageDraw, ImageFont

from tasks import benchmarks, chains

TASKS = ("visualmath", "visualmath-v1", *chains.VARIANTS)  # --dataset names of the synthetic tasks (v2 first: the default)
TEACHER_SLIPS = {1: 7, 3: 8, 5: 6}         # digit -> the look-alike an imperfect teacher writes for it
_OPS = ("+", "-", "*")
_LETTERS = "abcdefgh"
_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
_SHAPE_COLOURS = [(220, 30, 30), (30, 150, 40), (30, 60, 220), (230, 150, 0), (150, 40, 180)]

# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------


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


def _draw_shape(draw, box, rng):
    """One filled circle, square or triangle of a random colour inside `box` (left, top, right, bottom);
    returns its (colour name, kind) for v3's descriptions (chains.COLOURS names _SHAPE_COLOURS in order)."""
    colour = rng.choice(_SHAPE_COLOURS)
    kind = rng.choice(["circle", "square", "triangle"])
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    return chains.COLOURS[_SHAPE_COLOURS.index(colour)], kind


def _add_noise(img, noise, rng):
    """Replace a `noise` fraction of pixels by random colours, drawn from the example's rng (determinism)."""
    px = img.load()
    for _ in range(int(noise * img.width * img.height)):
        x, y = rng.randrange(img.width), rng.randrange(img.height)
        px[x, y] = tuple(rng.randrange(256) for _ in range(3))


def _colours(rng):
    return tuple(rng.randrange(200, 256) for _ in range(3)), tuple(rng.randrange(0, 90) for _ in range(3))

# --------------------------------------------------------------------------------------------------
# v2: digits and distractors in a grid (the default task)
# --------------------------------------------------------------------------------------------------


def sum_chain(values):
    """The running-sum reasoning over `values` and its result.

    >>> sum_chain([3, 5, 2, 7])
    ('<think>3+5=8, 8+2=10, 10+7=17</think><answer>17</answer>', 17)
    """
    total, steps = values[0], []
    for v in values[1:]:
        steps.append(f"{total}+{v}={total + v}")
        total += v
    return f"<think>{', '.join(steps)}</think><answer>{total}</answer>", total


def grid_example(rng, n_digits=4, n_shapes=3, grid=4, cell=28, noise=0.02, slip=0.0):
    """One grid example as a plain dict. `slip` > 0 gives the imperfect teacher's response (module docstring).

    Cell (r, c) spans pixels [c*cell, (c+1)*cell) x [r*cell, (r+1)*cell): with cell = 28 it is exactly one
    merged vision token (patch 14, merge 2), so the image has grid**2 tokens, in reading order.
    >>> ex = grid_example(random.Random(0))
    >>> ex["image"].size, len(ex["perception"]), ex["response"] == sum_chain([int(v) for v in ex["perception"]])[0]
    ((112, 112), 4, True)
    """
    img, values, _ = _grid_image(rng, n_digits, n_shapes, grid, cell, noise, slip)
    _, answer = sum_chain(values)
    seen = _teacher_reading(values, slip, rng)
    return dict(image=img, question=_grid_question(n_digits), answer=str(answer), choices=[],
                perception=[str(v) for v in values], response=sum_chain(seen)[0], precision=None, unit="",
                source="visualmath")


def _grid_image(rng, n_digits, n_shapes, grid, cell, noise, slip):
    """(image, digit values in reading order, shapes as (cell, colour name, kind) in reading order)."""
    if not 2 <= n_digits <= 8 or n_shapes < 0 or n_digits + n_shapes > grid * grid or not 0 <= slip <= 1:
        raise ValueError(f"bad knobs n_digits={n_digits} n_shapes={n_shapes} grid={grid} slip={slip}: need "
                         f"2..8 digits, >= 0 shapes, digits + shapes <= grid**2, slip in [0, 1]")
    cells = rng.sample(range(grid * grid), n_digits + n_shapes)
    digit_cells = sorted(cells[:n_digits])                          # reading order = raster order of cells
    values = [rng.randint(0, 9) for _ in range(n_digits)]
    bg, fg = _colours(rng)
    img = PIL.Image.new("RGB", (grid * cell, grid * cell), bg)
    scale = max(1, (cell - 4) // 11)  # glyph height 11 px -> fills most of the cell
    for pos, v in zip(digit_cells, values):
        r, c = divmod(pos, grid)
        tile = _render_number(str(v), fg, scale)
        img.paste(tile, (c * cell + (cell - tile.width) // 2, r * cell + (cell - tile.height) // 2), tile)
    draw, shapes = ImageDraw.Draw(img), []
    for pos in cells[n_digits:]:
        r, c = divmod(pos, grid)
        m = rng.randrange(3, 7)  # margin: shapes of several sizes
        shapes.append((pos, *_draw_shape(draw, (c * cell + m, r * cell + m, (c + 1) * cell - m, (r + 1) * cell - m), rng)))
    _add_noise(img, noise, rng)
    return img, values, sorted(shapes)


def _grid_question(n_digits):
    return (f"The grid shows {_WORDS[n_digits]} digits among shapes. Add them up in reading order "
            f"(left to right, top to bottom). What is their sum?")


def _teacher_reading(values, slip, rng):
    """The digits as the imperfect teacher reads them. NOTE: drawn after the image, so the image, question and
    answer do not depend on `slip`."""
    return [TEACHER_SLIPS[v] if v in TEACHER_SLIPS and slip and rng.random() < slip else v for v in values]


def make_grid(n, seed=0, **knobs):
    """`n` grid examples (v2) in the unified schema, deterministic for a seed; knobs as grid_example's.

    >>> ds = make_grid(3, seed=1)
    >>> len(ds), ds[0]["source"], ds[0]["image"].size
    (3, 'visualmath', (112, 112))
    """
    rng = random.Random(seed)
    return _dataset([grid_example(rng, **knobs) for _ in range(n)], seed)

# --------------------------------------------------------------------------------------------------
# v3: the v2 grid with a chain shaped like a real one (tasks/chains.py: the teacher, token classes)
# --------------------------------------------------------------------------------------------------


def v3_example(rng, variant="visualmath-v3", slip=0.0, pair_slip=0.0, noise=0.02):
    """One v3 example: v2's grid, digits, question and answer; the response is chains.teacher_chain's, reading
    the digits with the teacher's slips and describing the first one or two shapes in reading order. pair_slip:
    how often the fork variant's pair strategy adds wrong (models/tiny.py's teacher: 0.5; the rows' reference: 0).

    >>> ex = v3_example(random.Random(0))
    >>> ex["image"].size, read_values(ex["response"]) == ex["perception"], ex["response"].endswith(f"<answer>{ex['answer']}</answer>")
    ((112, 112), True, True)
    """
    img, values, shapes = _grid_image(rng, 4, 3, 4, 28, noise, slip)
    seen = _teacher_reading(values, slip, rng)
    # one draw seeds the chain's choices, so every variant of a seed has the same images, questions and answers
    chain_rng = random.Random(rng.getrandbits(64))
    response, _ = chains.teacher_chain(seen, [s[1:] for s in shapes[:2]], chain_rng, variant, pair_slip)
    return dict(image=img, question=_grid_question(4), answer=str(sum(values)), choices=[],
                perception=[str(v) for v in values], response=response, precision=None, unit="", source="visualmath")


# --------------------------------------------------------------------------------------------------
# v1: numbers in fixed slots (today's task, kept as a named option and as models/tiny.py's first lesson)
# --------------------------------------------------------------------------------------------------


def _render_slots(values, digits, cell, layout, noise, rng, n_shapes=0):
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
    bg, fg = _colours(rng)
    img = PIL.Image.new("RGB", (width, height), bg)
    scale = max(1, (cell - 4) // 11)  # glyph height 11 px -> fills most of the slot
    for v, (x0, y0) in zip(values, origins):
        tile = _render_number(str(v), fg, scale)
        # centre the tile in its slot (fixed) or in its jittered box
        img.paste(tile, (x0 + (slot_w - tile.width) // 2, y0 + (cell - tile.height) // 2), tile)
    if n_shapes:  # the panel: shapes in distinct cells of a 4x2 grid of half cells (one 14-px patch each)
        g, draw = cell // 2, ImageDraw.Draw(img)
        for spot in rng.sample(range(8), n_shapes):
            left, top = width - panel_w + (spot % 4) * g + 2, (spot // 4) * g + 2
            _draw_shape(draw, (left, top, left + g - 5, top + g - 5), rng)
    if noise > 0:
        _add_noise(img, noise, rng)
    return img


def slots_example(rng, n_numbers=2, digits=1, ops=("+",), cell=28, layout="fixed", noise=0.02, shapes=0):
    """One v1 example as a plain dict: `n_numbers` numbers of `digits` digits in slots, one expression.

    >>> ex = slots_example(random.Random(0))
    >>> ex["response"] == f"<think>{ex['perception'][0]}+{ex['perception'][1]}={ex['answer']}</think><answer>{ex['answer']}</answer>"
    True
    >>> ex["image"].size
    (56, 28)
    """
    if n_numbers < 1 or digits < 1 or not ops or not set(ops) <= set(_OPS) or not 0 <= shapes <= 8:
        raise ValueError(f"bad knobs n_numbers={n_numbers} digits={digits} ops={ops!r} shapes={shapes}: need "
                         f">=1, >=1, a non-empty subset of {list(_OPS)}, 0..8")
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
    image = _render_slots(values[:n_numbers], digits, cell, layout, noise, rng, n_shapes)
    response = f"<think>{expr_values}={answer}</think><answer>{answer}</answer>"
    return dict(image=image, question=question, answer=str(answer), choices=[],
                perception=[str(v) for v in values], response=response,
                precision=None, unit="", source="visualmath")


def make_slots(n, seed=0, **knobs):
    """`n` v1 examples in the unified schema, deterministic for a seed; knobs as slots_example's.

    Knobs: n_numbers (how many numbers to read), digits (per number), ops (drawn per gap from this set:
    '+', '-', '*'; usual precedence), cell (slot size in px; 28 = one merged Qwen2.5-VL token),
    layout ('fixed' slots side by side, or 'jitter': numbers move within a larger 2-row canvas),
    noise (fraction of pixels replaced by random colours), shapes (if > 0: a panel on the right holds
    1..shapes coloured shapes, at most 8, and their count n is one more operand and perception value).
    >>> make_slots(3, seed=1)[0]["image"].size
    (56, 28)
    """
    rng = random.Random(seed)
    return _dataset([slots_example(rng, **knobs) for _ in range(n)], seed)

# --------------------------------------------------------------------------------------------------
# Both tasks: datasets by name, perception in a response
# --------------------------------------------------------------------------------------------------


class Rows:
    """The examples of a synthetic task: plain dicts in the loaders' schema (benchmarks.COLUMNS, in its order),
    answering the part of datasets.Dataset's interface the project uses -- len, ds[i] (row i), ds["question"]
    (a column), iteration, column_names -- so synthetic and loaded data look alike without the `datasets`
    package. Like a Dataset it hands out a fresh dict per row; its PIL images are shared (nothing edits them).
    What a Dataset would add, encoding each image to PNG and back, changes no pixel (tests/test_visualmath.py).
    """

    def __init__(self, rows):
        self._rows = [{k: row[k] for k in benchmarks.COLUMNS} for row in rows]
        self.column_names = list(benchmarks.COLUMNS)

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, key):
        if isinstance(key, str):  # a column, as Dataset["question"] gives it
            if key not in self.column_names:
                raise KeyError(f"no column {key!r}; the columns are {self.column_names}")
            return [row[key] for row in self._rows]
        return dict(self._rows[key])  # an int (a slice would give a list of dicts, unlike a Dataset)

    def __iter__(self):
        return (dict(row) for row in self._rows)

    def __repr__(self):
        return f"Rows({len(self)} rows: {', '.join(self.column_names)})"


def _dataset(rows, seed):
    """Rows in the loaders' schema, ids numbered: synthetic and real data look alike."""
    for i, row in enumerate(rows):
        row["id"] = f"visualmath-{seed}-{i}"
    return Rows(rows)


def make(name, n, seed=0):
    """The synthetic task `name` (one of TASKS) with its default knobs: n examples from `seed`."""
    if name == "visualmath":
        return make_grid(n, seed)
    elif name == "visualmath-v1":
        return make_slots(n, seed)
    elif name in chains.VARIANTS:
        rng = random.Random(seed)
        return _dataset([v3_example(rng, name) for _ in range(n)], seed)
    raise ValueError(f"unknown synthetic task {name!r}: use one of {TASKS}")


def example(name, rng, slip=0.0, pair_slip=0.0):
    """One example of task `name` from `rng` as a plain dict (models/tiny.py's SFT stream; slips: grid tasks only)."""
    if name == "visualmath":
        return grid_example(rng, slip=slip)
    elif name == "visualmath-v1":
        return slots_example(rng)
    elif name in chains.VARIANTS:
        return v3_example(rng, name, slip, pair_slip)
    raise ValueError(f"unknown synthetic task {name!r}: use one of {TASKS}")


def read_spans(text):
    """Character spans of the values a response read off the image -- the operands of its <think> chain --,
    or None when there is no chain to parse.

    A chain is comma-separated steps "expression=value"; all operands of the first step are read, a later
    step's first operand is the carried result and the rest are read. The spans come from the chain's
    structure, not from matching values, so a read "8" is told apart from a computed "=8".
    >>> text = "<think>3+5=8, 8+8=16</think><answer>16</answer>"
    >>> [text[a:b] for a, b in read_spans(text)], read_spans(text)[2]
    (['3', '5', '8'], (16, 17))

    A v3 response says what it read before it computes ("I see 3, 5, 8."): its read list is what it read
    (chains.read_list_spans); v2 and v1 responses never have one.
    """
    listed = chains.read_list_spans(text)
    if listed is not None:
        return listed
    m = re.search(r"<think>(.{0,400}?)</think>", text or "", re.S)
    if m is None:
        return None
    spans, start = [], m.start(1)
    for i, step in enumerate(m.group(1).split(",")):
        expression, equals, _ = step.partition("=")
        operands = [(start + o.start(), start + o.end()) for o in re.finditer(r"\d+", expression)]
        if not equals or not operands:
            return None
        spans += operands if i == 0 else operands[1:]
        start += len(step) + 1  # the step and its comma
    return spans


def read_values(text):
    """The values a response read off the image (read_spans), as strings, or None if unparsable.

    >>> read_values("<think>3+5=8, 8+2=10, 10+7=17</think><answer>17</answer>")
    ['3', '5', '2', '7']
    >>> read_values("<think>3*4-2=10</think><answer>10</answer>"), read_values("<answer>10</answer>")
    (['3', '4', '2'], None)
    """
    spans = read_spans(text)
    return None if spans is None else [text[a:b] for a, b in spans]


def read_right(text, perception):
    """Did the response read every perception value (as a multiset: a sum does not depend on order)?

    >>> read_right("<think>5+3=8, 8+2=10</think>", ["3", "5", "2"]), read_right("<think>8+5=13</think>", ["3", "5"])
    (True, False)
    """
    values = read_values(text)
    return values is not None and sorted(values) == sorted(str(p) for p in perception)


def locate_perception(text, perception):
    """Character spans (start, end) of the perception values in `text`, whole numbers only, one per value.

    Each value takes the first occurrence after the previous value's match; if there is none, the first
    unused occurrence anywhere (a model may write "4+3" for perception ["3", "4"]). A value that does not
    occur is left out, so the result may be shorter than `perception`; spans follow perception's order.
    On the grid task the running sums come after the digit they add, so "3+5=8, 8+2=10" places 3, 5 and
    2 on the read digits, not on the carried 8.

    >>> locate_perception("<think>3+4=7</think><answer>7</answer>", ["3", "4"])
    [(7, 8), (9, 10)]
    >>> locate_perception("<think>3+3=6</think>", ["3", "3"])
    [(7, 8), (9, 10)]
    >>> locate_perception("<think>4+3=7</think>", ["3", "4"])   # other order
    [(9, 10), (7, 8)]
    >>> locate_perception("12+2=14", ["2", "12"])   # '2' inside '12' is not a match
    [(3, 4), (0, 2)]
    >>> locate_perception("<think>3+5=8, 8+2=10</think>", ["3", "5", "2"])
    [(7, 8), (9, 10), (16, 17)]
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
