"""infra/cli.py -- the command line of train.py and eval.py: flags from a config dataclass, every value checked up front.

A script's config is one flat dataclass; each field becomes `--field value`, typed by its default, and the
comment after the field is its --help line (a comment on a line of its own starts a help group), so the
meaning of a flag is written once, next to its default:

    @dataclass
    class Config:
        # Optimization
        lr: float = 1e-4        # AdamW peak learning rate        ->  --lr   AdamW peak learning rate (default: 0.0001)

Every value is then checked before anything is loaded or written (`check`: (field, ok, what to do) rules),
and a bad one stops the program with one line in argparse's style, never a traceback:

    train.py: error: --lr -1.0: must be > 0 (1e-4 for the tiny model, ~1e-6 for 3B)

Paths must exist or look like a hub id (owner/name) -- checked here (a --model in runs.check_model, which knows
run folders), before a 30-second network retry could tell the user less. Run: `python train.py --help`,
`python eval.py --help`; tests: tests/test_runs.py.
"""
import argparse
import ast
import dataclasses
import inspect
import io
import os
import re
import textwrap
import tokenize

# Where --model "" points: the embedded default model, built by models/tiny.py (and by the first `python train.py`),
# in the repository's cache/ folder unless $ATRL_CACHE names another
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL_DIR = os.path.join(os.environ.get("ATRL_CACHE", os.path.join(REPO, "cache")), "tiny-qwen2.5-vl")

# --------------------------------------------------------------------------------------------------
# argparse from a config dataclass, help from its comments, one-line errors
# --------------------------------------------------------------------------------------------------


def field_comments(source):
    """{field: (group, help)} from a dataclass's source text: the comment after each field is its help, the last
    comment on a line of its own above it is its group.

    >>> field_comments('''class C:
    ...     # Sizes
    ...     n: int = 2          # how many (>= 1)
    ...     s: str = "#"        # a '#' inside a value is no comment
    ... ''')
    {'n': ('Sizes', 'how many (>= 1)'), 's': ('Sizes', "a '#' inside a value is no comment")}
    """
    source = textwrap.dedent(source)
    lines = source.splitlines()
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    fields = {n.lineno: n.target.id for n in ast.parse(source).body[0].body if isinstance(n, ast.AnnAssign)}
    out, group = {}, ""
    for lineno in sorted(set(comments) | set(fields)):
        if lineno in fields:
            out[fields[lineno]] = (group, comments.get(lineno, ""))
        elif lines[lineno - 1].lstrip().startswith("#"):
            group = comments[lineno]
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of a 60-line usage block
        raise SystemExit(f"{self.prog}: error: {message} (--help lists every flag)")


def parse_config(cls, description, prog, argv=None):
    """An instance of the dataclass `cls` from the command line: `--field value` for every field, typed by
    its default (a bool field is a plain switch), its comment as the help line, grouped as in the class."""
    parser = _Parser(prog=prog, description=description)
    comments, groups = field_comments(inspect.getsource(cls)), {}
    for f in dataclasses.fields(cls):
        group, text = comments.get(f.name, ("", ""))
        if group not in groups:
            groups[group] = parser.add_argument_group(group or None)
        text = text.replace("%", "%%")  # argparse formats help strings with %
        if isinstance(f.default, bool):
            groups[group].add_argument(f"--{f.name}", action="store_true", help=text)
        else:
            groups[group].add_argument(f"--{f.name}", type=type(f.default), default=f.default, metavar="",
                                       help=f"{text} (default: %(default)r)")
    return cls(**vars(parser.parse_args(argv)))


def config_error(prog, message):
    """Stop with one line, argparse's format: `train.py: error: --lr -1.0: must be > 0`."""
    raise SystemExit(f"{prog}: error: {message}")


def check(prog, cfg, rules):
    """rules: (field, ok, what to do) -- the first rule that is not ok stops the program, naming the value."""
    for name, ok, fix in rules:
        if not ok:
            config_error(prog, f"--{name} {getattr(cfg, name)!r}: {fix}")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def one_of(cfg, **choices):
    """check() rules for flags with a fixed set of values: --flag must be one of its choices (--help says what each
    means; the message lists them). E.g. one_of(cfg, rollout=("engine", "hf"))."""
    return [(name, getattr(cfg, name) in allowed, f"use one of {', '.join(allowed)}") for name, allowed in choices.items()]


def hub_shaped(value):
    """True if `value` can only be a hub id: owner/name shape, not a data file, no local folder it starts in."""
    return (_HUB_ID.fullmatch(value) is not None and not value.endswith((".parquet", ".json", ".jsonl"))
            and not os.path.isdir(value.split("/")[0]))


def check_data(prog, flag, value, builtin=()):
    """A dataset value must be built in (`builtin`), an existing file/folder, or a hub id (owner/name); a trailing
    `@split` (EasyR1's spelling, e.g. hiyouga/geometry3k@train) names the split and is checked by the loader."""
    if "@" in value and not os.path.exists(value):
        value = value.rsplit("@", 1)[0]
    if value in builtin or os.path.exists(value) or hub_shaped(value):
        return
    names = [b for b in builtin if b]  # "" (nothing) is allowed but is no name to suggest
    config_error(prog, f"--{flag} {value!r}: no such file or folder, and not a hub id (owner/name): pass "
                       f"{' or '.join(names) + ', ' if names else ''}a local .parquet/.json/.jsonl file or folder, "
                       "or a hub name like hiyouga/geometry3k")
