"""The layout's promises, read from the code: no import circles, and imports that point one way (DESIGN §3).

Project modules are the root's .py files (the method) and those of its package folders (tasks/, infra/, ops/,
models/, experiments/). Every `import x` / `from x import y` counts, also one inside a function: a lazy import hides a
circle from Python at start-up, not from a reader, and the next refactor that moves it to the top breaks the
program. The direction, floor first:

    tasks/, infra/, ops/  import nothing of the project outside their own folder
    atrl, clustering,     the concept files: torch, numpy, numba, each other and ops/ only (never a config, a
    connectivity          task or the run machinery)
    the rest of the root  the method's other files and the entry points (train.py, eval.py)
    models/               the tiny model's build (it trains and evaluates through the root's files)
    experiments/          nothing outside experiments/ imports it
"""
import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGES = ("tasks", "infra", "ops", "models", "experiments")


def project_modules():
    """{dotted module name: file path} for the root's .py files and the package folders' (tests, bench excluded)."""
    found = {f[:-3]: os.path.join(REPO, f) for f in os.listdir(REPO) if f.endswith(".py")}
    for package in PACKAGES:
        for f in os.listdir(os.path.join(REPO, package)):
            if f.endswith(".py") and f != "__init__.py":
                found[f"{package}.{f[:-3]}"] = os.path.join(REPO, package, f)
    return found


def import_graph():
    """{module: set of project modules it imports}; `from tasks import grading` counts as tasks.grading."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = (imported & set(modules)) - {name}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "black"
        stack.pop()
        return None
    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_project_modules_import_each_other_without_circles():
    graph = import_graph()
    assert {"train", "atrl", "eval", "models.tiny", "experiments.report", "infra.cli", "infra.runs",
            "tasks.grading"} <= set(graph)
    assert graph["train"] >= {"atrl", "infra.runs", "tasks.visualmath"}  # the graph sees both kinds of import
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_imports_point_one_way():
    graph = import_graph()
    folder = {name: name.split(".")[0] if "." in name else "" for name in graph}
    for name, imported in graph.items():
        outside = {m for m in imported if folder[m] != folder[name]}
        if folder[name] in ("tasks", "infra", "ops"):  # the floor
            assert not outside, f"{name} imports {sorted(outside)}: tasks/, infra/ and ops/ stand on nothing of the project"
        if name in ("atrl", "clustering", "connectivity"):  # concept files
            others = {m for m in imported if folder[m] != "ops"}
            assert others <= {"clustering"}, f"{name} imports {sorted(others)}: a concept file stands alone"
        if folder[name] != "experiments":
            assert not {m for m in imported if folder[m] == "experiments"}, f"{name} imports experiments/"


def test_the_root_holds_the_method():
    """The card's six files and the decode engine; everything else lives in a folder named for its role."""
    root = sorted(f for f in os.listdir(REPO) if f.endswith(".py"))
    assert {"atrl.py", "connectivity.py", "clustering.py", "rollout.py", "train.py", "eval.py"} <= set(root)
    assert len(root) <= 8, root


def test_the_synthetic_path_runs_without_datasets():
    """`datasets` and pyarrow are for the hub and file loaders only (DESIGN §4): with both made unimportable, the
    synthetic task is built, a row is put to the model as rollouts put it, and train.py, eval.py and bench/gpu.py
    get through their imports and --help (.ci/nodatasets runs a 2-step train.py and bench/gpu.py --shrink in a venv
    without them). A loader then says in one line what to install."""
    script = (
        "import os, runpy, sys\n"
        "sys.modules.update(datasets=None, pyarrow=None)  # None: `import datasets` raises ImportError\n"
        "from tasks import benchmarks, visualmath\n"
        "import connectivity, engine, eval, rollout  # noqa\n"
        "rows = visualmath.make('visualmath', 2)\n"
        "assert benchmarks.format_question(rows[0]) and len(rows['image']) == 2\n"
        "try:\n"
        "    benchmarks.load_benchmark('hiyouga/geometry3k')\n"
        "except ValueError as error:\n"
        "    assert 'pip install' in str(error), error\n"
        "for path in ('train.py', 'eval.py', 'bench/gpu.py'):\n"
        "    sys.argv, sys.path[0] = [path, '--help'], os.path.dirname(os.path.abspath(path))  # as `python path`\n"
        "    try:\n"
        "        runpy.run_path(path, run_name='__main__')\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (path, done.code)\n"
        "assert 'datasets' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]
