"""VisualMath v3's chains (tasks/chains.py) and tasks (visualmath.v3_example): token classes from the grammar.

The teacher knows the class of each piece it writes; label_text recovers classes from text alone. The two are
independent codes for one grammar, so their agreement on thousands of teacher texts (slips, all variants, two
shapes or none) is the oracle for the labeller that train.py runs on the policy's own samples.
"""
import random

import pytest
import torch

from models import tiny
from tasks import chains, visualmath

NAMES = ["teacher_chain", "piece_classes", "read_list_spans", "label_text", "token_classes", "class_means",
         "on_grammar"]


@pytest.fixture(scope="module")
def v3_tokenizer():
    return tiny.make_tokenizer(task="visualmath-v3")


@pytest.mark.parametrize("name", NAMES)
def test_docstring_examples(doctest_examples, name):
    assert doctest_examples(chains, [name]) > 0


def test_v3_docstring_example(doctest_examples):
    assert doctest_examples(visualmath, ["v3_example"]) > 0


def test_label_text_agrees_with_the_teacher_on_every_character():
    rng = random.Random(0)
    for i in range(3000):
        values = [rng.randint(0, 9) for _ in range(rng.choice([2, 4, 4, 5]))]
        shapes = [(rng.choice(chains.COLOURS), rng.choice(chains.KINDS)) for _ in range(rng.randint(0, 3))]
        text, pieces = chains.teacher_chain(values, shapes, rng, chains.VARIANTS[i % 3], pair_slip=0.5)
        assert text == "".join(p for p, _ in pieces)
        assert chains.label_text(text) == chains.piece_classes(pieces), text
        assert chains.on_grammar(text) == (len(values) >= 1 and len(shapes) <= 3), text  # the teacher never derails


def test_every_class_is_where_the_grammar_puts_it():
    text, pieces = chains.teacher_chain([3, 5, 2, 7], [("red", "circle"), ("blue", "square")], random.Random(3),
                                        "visualmath-v3-fork")
    by_class = {c: [p for p, k in pieces if k == c] for c in range(len(chains.CLASSES))}
    assert by_class[chains.PERCEPTION] == ["3", "5", "2", "7"]
    assert set(by_class[chains.GROUNDED]) <= {"red", "circle", "blue", "square"} and by_class[chains.GROUNDED][:2] == ["red", "circle"]
    assert len(by_class[chains.FORK]) == 1 and by_class[chains.FORK][0] in chains.FORKS
    steps = len(by_class[chains.ARITHMETIC])
    assert steps == 3 and len(by_class[chains.COPY]) == 2 * steps + 2  # two operands per step, answer twice
    # ten free-form choices (opener, read, shape, transition, 2 links, check, closing, [second shape])
    assert 8 <= len(by_class[chains.FILLER]) <= 9


def test_fixed_variant_has_no_free_choice_and_the_others_do():
    texts = {v: {chains.teacher_chain([1, 2, 3, 4], [("red", "circle"), ("green", "square")], random.Random(s), v)[0]
                 for s in range(50)} for v in chains.VARIANTS}
    assert len(texts["visualmath-v3-fixed"]) == 1
    assert len(texts["visualmath-v3"]) > 40 and len(texts["visualmath-v3-fork"]) > 40


def test_fork_variant_pair_strategy_slips_and_the_running_sum_never_does():
    rng, pairs, slipped = random.Random(1), 0, 0
    for _ in range(2000):
        text, pieces = chains.teacher_chain([3, 5, 2, 7], [], rng, "visualmath-v3-fork", pair_slip=0.5)
        answer = text.rsplit("<answer>", 1)[1].split("</answer>")[0]
        if chains.FORKS[1] in text:
            pairs, slipped = pairs + 1, slipped + (answer != "17")
        else:
            assert answer == "17"
    assert 900 < pairs < 1100 and abs(slipped / pairs - 0.5) < 0.06


def test_label_text_on_model_like_deviations():
    def classes_of(text, sub):  # the classes of the characters of `sub`'s first occurrence
        i = text.index(sub)
        return {chains.CLASSES[c] for c in chains.label_text(text)[i:i + len(sub)]}
    broken = "<think>Okay. I saw 3, 5. Adding up: 3+5=8 then 8+1=9. Done. 9</think><answer>9</answer>"
    assert chains.read_list_spans(broken) is None                        # no read phrase: no perception
    assert classes_of(broken, "3, 5") == {"arithmetic", "other"}         # numbers never written before
    assert classes_of(broken, " then ") == {"other"}                     # not a link variant: no filler
    assert classes_of(broken, "Okay.") == {"filler"}
    assert classes_of(broken, "9<") == {"copy", "other"}                 # written before: a copy
    odd = "Reading: 4, 4. 4+4=9. So the sum is 12."
    assert classes_of(odd, "4, 4") == {"perception", "other"}
    assert classes_of(odd, "9") == {"arithmetic"} and classes_of(odd, "12") == {"arithmetic"}  # never written before
    assert chains.label_text("") == [] and set(chains.label_text("<|im_end|>xyz")) == {chains.OTHER}


def test_token_classes_with_the_v3_tokenizer(v3_tokenizer):
    for ex in visualmath.make("visualmath-v3", 40, seed=5):
        ids = v3_tokenizer(ex["response"], add_special_tokens=False)["input_ids"]
        spans = chains.token_char_spans(v3_tokenizer, ids)
        assert spans[-1][1] == len(ex["response"])                       # the spans tile the text
        classes = chains.token_classes(chains.label_text(ex["response"]), spans)
        perception = [v3_tokenizer.decode([i]) for i, c in zip(ids, classes) if c == chains.PERCEPTION]
        assert perception == ex["perception"]                            # one token per read digit, in order
        # a token holding a grounded word is grounded, whatever else BPE merged into it
        for i, c in zip(ids, classes):
            if any(w in v3_tokenizer.decode([i]) for w in ("red", "circle", "square")):
                assert c == chains.GROUNDED


def test_a_lone_space_token_takes_the_class_of_the_word_after_it(v3_tokenizer):
    found = 0
    for ex in visualmath.make("visualmath-v3", 60, seed=9):
        ids = v3_tokenizer(ex["response"], add_special_tokens=False)["input_ids"]
        spans = chains.token_char_spans(v3_tokenizer, ids)
        classes = chains.token_classes(chains.label_text(ex["response"]), spans, ex["response"])
        for t, (a, b) in enumerate(spans[:-1]):
            if ex["response"][a:b] == " ":
                found += 1
                assert classes[t] == classes[t + 1] == chains.GROUNDED, ex["response"]  # " " + "green ": a colour
    assert found > 5                                                     # the tokenizer does split some colours


def test_label_batch_pads_with_minus_one_and_follows_each_response(v3_tokenizer):
    texts = [ex["response"] for ex in visualmath.make("visualmath-v3", 3, seed=6)] + ["<answer>7</answer>"]
    ids = [v3_tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]
    T, P = max(map(len, ids)), 5
    input_ids = torch.full((4, P + T), v3_tokenizer.pad_token_id)
    mask = torch.zeros(4, T, dtype=torch.bool)
    for b, row in enumerate(ids):
        input_ids[b, P:P + len(row)] = torch.tensor(row)
        mask[b, :len(row)] = True
    classes = chains.label_batch(v3_tokenizer, {"input_ids": input_ids, "response_mask": mask, "prompt_len": P})
    assert classes.shape == (4, T) and ((classes == -1) == ~mask).all()
    for b, text in enumerate(texts):
        expected = chains.token_classes(chains.label_text(text), chains.token_char_spans(v3_tokenizer, ids[b]), text)
        assert classes[b, :len(ids[b])].tolist() == expected
    assert classes[3, :len(ids[3])].tolist().count(chains.ARITHMETIC) == 1 and classes[3, len(ids[3]) - 1] == chains.OTHER


def test_v3_tasks_share_images_questions_and_answers_and_read_like_v2():
    rows = {v: visualmath.make(v, 12, seed=3) for v in chains.VARIANTS}
    base = rows["visualmath-v3"]
    for v in chains.VARIANTS[1:]:
        assert rows[v]["answer"] == base["answer"] and rows[v]["perception"] == base["perception"]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(rows[v]["image"], base["image"]))
    assert base["question"][0] == visualmath.make("visualmath", 1, seed=3)["question"][0]  # v2's question
    for ex in base:
        assert visualmath.read_values(ex["response"]) == ex["perception"]
        assert visualmath.read_right(ex["response"], ex["perception"])
        assert int(ex["answer"]) == sum(map(int, ex["perception"]))


def test_v3_teacher_slips_stay_consistent_and_keep_the_image():
    for i in range(30):
        clean = visualmath.v3_example(random.Random(i))
        noisy = visualmath.v3_example(random.Random(i), slip=1.0)
        assert clean["image"].tobytes() == noisy["image"].tobytes() and clean["answer"] == noisy["answer"]
        seen = [str(visualmath.TEACHER_SLIPS.get(int(v), int(v))) for v in clean["perception"]]
        assert visualmath.read_values(noisy["response"]) == seen
        assert noisy["response"].endswith(f"<answer>{sum(map(int, seen))}</answer>")


def test_shape_descriptions_name_the_drawn_shapes():
    """Oracle: the described colour is the colour of pixels in the first shape's cell."""
    rgb = dict(zip(chains.COLOURS, visualmath._SHAPE_COLOURS))
    for ex in visualmath.make("visualmath-v3-fixed", 20, seed=8):
        words = ex["response"].split(" a ", 1)[1].split(".")[0].split()
        colour, kind = words[0], words[1]
        assert kind in chains.KINDS
        pixels = {colour for _, colour in ex["image"].getcolors(1 << 16)}
        assert rgb[colour] in pixels, (colour, ex["id"])
