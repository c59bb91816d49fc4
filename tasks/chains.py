"""VisualMath v3's reasoning chains: a teacher who writes like a real model, and the class of every token it writes.

On v2 the teacher writes `<think>3+5=8, 8+2=10, 10+7=17</think>`: the only uncertain tokens are the read
digits, so plain GRPO already puts its update there and a token selector has nothing to remove. Real chains
differ: over half of Qwen3-8B's chain tokens sit below 0.01 nats and ~20% above 0.67 (arXiv 2506.01939), most of
the high-entropy ones free-form phrasing that does not change the answer; visual dependency is sparse (VPPO,
arXiv 2510.09285). v3's teacher writes that shape on the same grid, digits, slips and reward:

    <think>Okay. I see 3, 5, 2, 7. There is a red circle. Adding up: 3+5=8; then 8+2=10 and 10+7=17.
    Looks right. The total is 17.</think><answer>17</answer>

    perception  3 5 2 7             the digits it reads off the image (the teacher's slips live here)
    filler      Okay. / I see / ... one of 3-4 variants drawn at random per slot, ten slots: answer-free noise
    grounded    red circle          an accurate description of a shape: needs the image, does not change the answer
    copy        3 5 | 8 | 17        numbers that repeat one written earlier (the listed digits, carried sums, answer)
    arithmetic  8 10 17             results of an addition
    fork        Step by step.       (the fork variant) the strategy, which does change the answer
    other       tags, '+', '=', punctuation, the article, EOS

A model SFT'd on this teacher (models/tiny.py) learns each slot's choice as a calibrated distribution, so a filler
choice token carries ln 3 = 1.10 or ln 4 = 1.39 nats of entropy and a gradient whose expectation is zero (the
choice is independent of the reward), while the perception tokens carry the teacher's 0.61-nat slips and most
of the signal. That is "diluted credit" with the classes known exactly, which is what an oracle arm needs --
if it dilutes the gradient, which experiments/dilution.py measures rather than assumes (on the tiny warm starts: no signal
in the filler, but only 22-35% of the gradient's noise; rare samples that leave the grammar hold two thirds).

Three tasks (visualmath.make): `visualmath-v3`, the chain above; `visualmath-v3-fixed`, every free-form slot
fixed to its first variant and one shape described (the same tokens' kind, no filler noise: the control
"without filler"); `visualmath-v3-fork`, v3 plus one strategy choice that matters, "Step by step." (a running
sum) or "Pair them up." ((a+b)+(c+d), whose last addition the teacher gets wrong by one half of the time), so a
high-entropy token with signal exists and the entropy selector is not beaten by construction.

Labels come two ways, which the tests check against each other on thousands of teacher texts:
`teacher_chain` knows each piece's class as it writes it; `label_text` recovers the classes of any text,
a policy's own samples included, from the grammar alone (the read list, the chain's steps, the known phrases,
colour and shape words). `token_classes` turns character classes into one class per token: the class of
highest priority among its characters (CLASSES is in priority order), so a BPE token merging " a red" is grounded.

Where we chose: ten slots of three or four variants whose first words differ (the choice sits on one token);
the read list and the chain keep v2's arithmetic; shape descriptions name colour and kind of the first shapes in
reading order. Run: `python -m pytest -q tests/test_chains.py`.
"""

import re

CLASSES = ("perception", "grounded", "fork", "arithmetic", "copy", "filler", "other")  # by priority
PERCEPTION, GROUNDED, FORK, ARITHMETIC, COPY, FILLER, OTHER = range(len(CLASSES))
NOISE = (FILLER, GROUNDED)    # the classes known not to change the answer (the oracle arms mask them)
VARIANTS = ("visualmath-v3", "visualmath-v3-fixed", "visualmath-v3-fork")

# The free-form slots and their variants (the "fixed" task writes the first of each). No variant is a prefix
# of another in its slot, so a choice is made at one token.
SLOTS = {
    "opener": ("Okay.", "Let me look.", "First, the grid.", "Right."),
    "read": ("I see", "Reading:", "The digits are"),
    "shape": ("There is", "Also", "Besides,"),
    "transition": ("Adding up:", "Now add them.", "Let me add.", "Sum:"),
    "link": ("; then ", ", ", " and "),
    "check": ("Looks right.", "That checks out.", "Done."),
    "closing": ("The total is", "So the sum is", "Answer:"),
}
SECOND_SHAPE = "and"          # the one-or-two-descriptions choice: " and a <colour> <kind>" or nothing
FORKS = ("Step by step.", "Pair them up.")   # fork variant: running sum | pairs (the slip-prone strategy)
COLOURS = ("red", "green", "blue", "orange", "purple")    # the names of visualmath's shape colours, in order
KINDS = ("circle", "square", "triangle")

# --------------------------------------------------------------------------------------------------
# The teacher: a chain and the class of each of its pieces
# --------------------------------------------------------------------------------------------------


def _steps(values, strategy, pair_slip, rng):
    """Additions (a, b, result) of the chain: a running sum, or pairs then their sum (the last one slipping)."""
    if strategy == 0 or len(values) != 4:
        total, steps = values[0], []
        for v in values[1:]:
            steps.append((total, v, total + v))
            total += v
        return steps
    left, right = values[0] + values[1], values[2] + values[3]
    last = left + right + (1 if rng.random() < pair_slip else 0)   # the pair strategy's slip: off by one
    return [(values[0], values[1], left), (values[2], values[3], right), (left, right, last)]


def teacher_chain(values, shapes, rng, variant="visualmath-v3", pair_slip=0.5):
    """(response, pieces) of the v3 teacher reading `values` (ints, as read: slips already applied) and
    describing `shapes` ((colour, kind) names in reading order). pieces = [(text, class)] in order; their texts
    joined are the response. Every random choice is drawn from `rng`.

    >>> import random
    >>> text, pieces = teacher_chain([3, 5, 2, 7], [("red", "circle")], random.Random(0), "visualmath-v3-fixed")
    >>> text
    '<think>Okay. I see 3, 5, 2, 7. There is a red circle. Adding up: 3+5=8; then 8+2=10; then 10+7=17. Looks right. The total is 17.</think><answer>17</answer>'
    >>> [p for p, c in pieces if c == PERCEPTION], [p for p, c in pieces if c == GROUNDED]
    (['3', '5', '2', '7'], ['red', 'circle'])
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown v3 variant {variant!r}: use one of {VARIANTS}")
    fixed = variant == "visualmath-v3-fixed"

    def pick(options):
        return options[0] if fixed else rng.choice(options)
    pieces = [("<think>", OTHER), (pick(SLOTS["opener"]), FILLER), (" ", OTHER), (pick(SLOTS["read"]), FILLER)]
    for i, v in enumerate(values):                                   # the read list: the perception tokens
        pieces += [(", " if i else " ", OTHER), (str(v), PERCEPTION)]
    pieces.append((". ", OTHER))
    if shapes:                                                       # one or two accurate, useless descriptions
        pieces += [(pick(SLOTS["shape"]), FILLER), (" a ", OTHER), (shapes[0][0], GROUNDED), (" ", OTHER),
                   (shapes[0][1], GROUNDED)]
        if len(shapes) > 1 and not fixed and rng.random() < 0.5:
            pieces += [(" ", OTHER), (SECOND_SHAPE, FILLER), (" a ", OTHER), (shapes[1][0], GROUNDED), (" ", OTHER),
                       (shapes[1][1], GROUNDED)]
        pieces.append((". ", OTHER))
    pieces += [(pick(SLOTS["transition"]), FILLER), (" ", OTHER)]
    strategy = 0
    if variant == "visualmath-v3-fork":
        strategy = rng.randrange(2)
        pieces += [(FORKS[strategy], FORK), (" ", OTHER)]
    for j, (a, b, result) in enumerate(_steps(values, strategy, pair_slip, rng)):
        if j:
            pieces.append((pick(SLOTS["link"]), FILLER))
        # operands repeat a number already written (a listed digit or an earlier result): copies
        pieces += [(str(a), COPY), ("+", OTHER), (str(b), COPY), ("=", OTHER), (str(result), ARITHMETIC)]
    answer = str(result)
    pieces += [(". ", OTHER), (pick(SLOTS["check"]), FILLER), (" ", OTHER), (pick(SLOTS["closing"]), FILLER),
               (" ", OTHER), (answer, COPY), (".</think><answer>", OTHER), (answer, COPY), ("</answer>", OTHER)]
    return "".join(p for p, _ in pieces), pieces


def piece_classes(pieces):
    """One class per character of the joined pieces.

    >>> piece_classes([("ab", FILLER), ("1", COPY)])
    [5, 5, 4]
    """
    return [c for text, c in pieces for _ in text]


# --------------------------------------------------------------------------------------------------
# Labelling any text from the grammar
# --------------------------------------------------------------------------------------------------

def _any(options):
    return "(?:" + "|".join(re.escape(o) for o in options) + ")"


_SHAPE = rf"a {_any(COLOURS)} {_any(KINDS)}"
_STEP_RE = r"\d+\+\d+=\d+"
_GRAMMAR = re.compile(
    rf"<think>{_any(SLOTS['opener'])} {_any(SLOTS['read'])} \d(?:, \d)*\. "
    rf"(?:{_any(SLOTS['shape'])} {_SHAPE}(?: {SECOND_SHAPE} {_SHAPE})?\. )?{_any(SLOTS['transition'])} "
    rf"(?:{_any(FORKS)} )?{_STEP_RE}(?:{_any(SLOTS['link'])}{_STEP_RE})*\. {_any(SLOTS['check'])} "
    rf"{_any(SLOTS['closing'])} (\d+)\.</think><answer>\1</answer>")


def on_grammar(text):
    """Could the teacher have written `text`, up to its numbers? (A sample that leaves the grammar has "derailed":
    a token from the tail of a distribution, and usually a few confused ones after it.)

    >>> import random
    >>> on_grammar(teacher_chain([3, 5], [("red", "circle")], random.Random(2))[0])
    True
    >>> on_grammar("<think>Okay. I see 3, 5. There is a oranglue circle. Sum: 3+5=8. Done. Answer: 8.</think><answer>8</answer>")
    False
    """
    return _GRAMMAR.fullmatch(text or "") is not None


_READ = re.compile(r"(?:" + "|".join(re.escape(v) for v in SLOTS["read"]) + r") (\d+(?:, \d+){0,11})\.")
_STEP = re.compile(r"(?<![\d.])(\d+)\+(\d+)=(\d+)")
_NUMBER = re.compile(r"(?<!\d)\d+(?!\d)")
_WORDS = re.compile(r"\b(?:" + "|".join(COLOURS + KINDS) + r")\b")
_PHRASES = sorted({v.strip() for slot in SLOTS.values() for v in slot if v.strip(" ,;")} | {SECOND_SHAPE},
                  key=len, reverse=True)
_FILLER = re.compile("|".join(re.escape(p) for p in _PHRASES))
_FORK = re.compile("|".join(re.escape(f) for f in FORKS))


def read_list_spans(text):
    """Character spans of the digits listed after a read phrase ("I see 3, 5, 2, 7."), or None if no list.

    >>> t = "<think>Okay. I see 3, 5, 12. There is a red circle.</think>"
    >>> [t[a:b] for a, b in read_list_spans(t)], read_list_spans("<think>3+5=8</think>")
    (['3', '5', '12'], None)
    """
    m = _READ.search(text[:2000] if text else "")
    if m is None:
        return None
    return [(m.start(1) + n.start(), m.start(1) + n.end()) for n in _NUMBER.finditer(m.group(1))]


def label_text(text):
    """One class per character of any text, from the grammar alone (a policy's sample as much as the teacher's).

    Rules, later ones only where earlier ones left OTHER: the read list's numbers are perception; in each step
    "a+b=c", a and b are copies and c arithmetic; a link between two steps is filler; colour and shape words are
    grounded; fork phrases are fork; the slots' phrases are filler; any other number is a copy when it was
    written before, else arithmetic. Link punctuation (", ", "; then ") is recognised only between steps, so a
    comma elsewhere stays OTHER.
    >>> t = "Okay. I see 3, 5. Sum: 3+5=8. Done. Answer: 8."
    >>> "".join("PGFACfo"[c] for c in label_text(t))
    'fffffofffffoPooPooffffoCoCoAoofffffofffffffoCo'
    """
    labels = [OTHER] * len(text)

    def mark(a, b, cls):
        for i in range(a, b):
            if labels[i] == OTHER:
                labels[i] = cls
    for a, b in read_list_spans(text) or ():
        mark(a, b, PERCEPTION)
    steps = list(_STEP.finditer(text))
    for s in steps:
        mark(*s.span(1), COPY)
        mark(*s.span(2), COPY)
        mark(*s.span(3), ARITHMETIC)
    for s, t in zip(steps, steps[1:]):                       # the link between two consecutive steps
        if text[s.end():t.start()] in SLOTS["link"]:
            mark(s.end(), t.start(), FILLER)
    for regex, cls in ((_WORDS, GROUNDED), (_FORK, FORK), (_FILLER, FILLER)):
        for m in regex.finditer(text):
            mark(*m.span(), cls)
    seen = set()
    for m in _NUMBER.finditer(text):
        if all(labels[i] == OTHER for i in range(*m.span())):
            mark(*m.span(), COPY if m.group() in seen else ARITHMETIC)
        seen.add(m.group())
    return labels


# --------------------------------------------------------------------------------------------------
# Characters -> tokens
# --------------------------------------------------------------------------------------------------


def token_char_spans(tokenizer, ids):
    """(start, end) of each token's characters in tokenizer.decode(ids, skip_special_tokens=True); special
    tokens get an empty span. Token by token when the pieces add up to the whole text (byte-level BPE on ASCII:
    linear), else by incremental decoding (any tokenizer: quadratic)."""
    lengths = [len(tokenizer.decode([i], skip_special_tokens=True)) for i in ids]
    if sum(lengths) == len(tokenizer.decode(ids, skip_special_tokens=True)):
        ends = [sum(lengths[:t + 1]) for t in range(len(ids))]
    else:
        ends = [len(tokenizer.decode(ids[:t + 1], skip_special_tokens=True)) for t in range(len(ids))]
    return [(ends[t - 1] if t else 0, ends[t]) for t in range(len(ids))]


def token_classes(char_classes, spans, text=None):
    """One class per token: the highest-priority (lowest) class among its characters; OTHER for an empty span.
    Given the text, a token that is only whitespace takes the class of the token after it: BPE writes
    " green" as " " + "green " when " green" is no merge, and then the space token carries part of the choice of
    the colour (in 512 samples of v3's warm start, 234 of the 280 "other" tokens above 0.3 nats were such spaces).

    >>> token_classes([FILLER, OTHER, GROUNDED, COPY], [(0, 1), (1, 3), (3, 4), (4, 4)])
    [5, 1, 4, 6]
    >>> token_classes([OTHER, OTHER, GROUNDED], [(0, 1), (1, 2), (2, 3)], text="a r")
    [6, 1, 1]
    """
    classes = [min(char_classes[a:b], default=OTHER) for a, b in spans]
    if text is not None:
        for t in range(len(spans) - 2, -1, -1):                     # right to left: a run of spaces takes the word's
            a, b = spans[t]
            if b > a and text[a:b].isspace():
                classes[t] = classes[t + 1]
    return classes


def label_batch(tokenizer, batch):
    """(B, T) long: the class of every response token of a rollout batch (rollout.sample_groups' layout),
    -1 on padding. The labels come from the decoded text, so they hold for any response the policy writes."""
    import torch

    P, mask = batch["prompt_len"], batch["response_mask"]
    out = torch.full(mask.shape, -1, dtype=torch.long)               # (B, T)
    for b, ids in enumerate(batch["input_ids"][:, P:].cpu()):
        ids = ids[mask[b].cpu()].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        out[b, :len(ids)] = torch.tensor(token_classes(label_text(text), token_char_spans(tokenizer, ids), text))
    return out


def is_noise(classes):
    """bool, the shape of `classes`: the tokens known not to change the answer (NOISE: filler, grounded)."""
    return (classes == NOISE[0]) | (classes == NOISE[1])


def class_means(values, mask, classes, prefix="w_"):
    """{prefix + class name: mean of `values` over the valid tokens of that class} for the classes present.
    values, mask, classes (B, T). E.g. the realised weight W of every class, logged by train.py as w_<class>.

    >>> import torch
    >>> class_means(torch.tensor([[2., 0., 1.]]), torch.tensor([[1, 1, 0]]), torch.tensor([[0, 5, 5]]))
    {'w_perception': 2.0, 'w_filler': 0.0}
    """
    mask = mask.bool()
    out = {}
    for c, name in enumerate(CLASSES):
        sel = mask & (classes == c)
        if sel.any():
            out[prefix + name] = float(values[sel].float().mean())
    return out


def class_shares(values, mask, classes, prefix="push_"):
    """{prefix + class name: share of the sum of `values` over the valid tokens that falls on that class}, for the
    classes present (the shares add up to 1). values >= 0, mask, classes (B, T). E.g. train.py's push_<class>:
    where a step's update pushes, by token class.

    >>> import torch
    >>> class_shares(torch.tensor([[3., 1., 4.]]), torch.tensor([[1, 1, 0]]), torch.tensor([[0, 5, 5]]))
    {'push_perception': 0.75, 'push_filler': 0.25}
    """
    mask = mask.bool()
    total = float(values[mask].double().sum())
    out = {}
    for c, name in enumerate(CLASSES):
        sel = mask & (classes == c)
        if sel.any():
            out[prefix + name] = float(values[sel].double().sum()) / total if total > 0 else 0.0
    return out
