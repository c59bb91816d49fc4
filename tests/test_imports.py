"""No import circles between the root modules (DESIGN §3: dependencies point one way).

Every `import x` / `from x import y` counts, also one inside a function: a lazy import hides a circle from
Python at start-up, not from a reader, and the next refactor that moves it to the top breaks the program.
"""
import ast
import os

from conftest import REPO


def root_import_graph():
    """{module: set of root modules it imports} over the repository's top-level .py files."""
    modules = {f[:-3] for f in os.listdir(REPO) if f.endswith(".py")}
    graph = {}
    for name in modules:
        tree = ast.parse(open(os.path.join(REPO, name + ".py")).read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        graph[name] = (imported & modules) - {name}
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


def test_root_modules_import_each_other_without_circles():
    graph = root_import_graph()
    assert {"train", "atrl", "eval", "tiny", "report", "cli", "runs"} <= set(graph)
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"
