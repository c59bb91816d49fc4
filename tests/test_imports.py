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
