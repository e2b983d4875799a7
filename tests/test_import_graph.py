"""slimkit's modules import each other without cycles, walked with ast over two graphs:

- import time: the statements that run when a module is imported (module level, class bodies, top-level
  if/try/with; not function bodies). A cycle here is a half-initialised module at some user's import.
- all imports, deferred ones inside functions too: a cycle hidden in a function (comm/_registry.py and
  comm/hook.py once imported each other that way) still means two modules that cannot be read apart."""
import ast
from pathlib import Path

import pytest

import slimkit

ROOT = Path(slimkit.__file__).parent


def _module_name(path):
    parts = ("slimkit",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _import_time_nodes(body):
    """Statements executed on import: recurse into if/try/with/class bodies, not into functions."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            for name in ("body", "orelse", "finalbody", "handlers"):
                yield from _import_time_nodes(getattr(node, name, []) or [])


def _all_nodes(body):
    for stmt in body:
        yield from (n for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))


def _resolve(module, node):
    """The slimkit modules an import statement needs. ``from pkg import sub`` needs pkg.sub only (pkg's own
    import is under way or done, like any parent package's); ``from pkg import name`` needs pkg itself."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:  # relative: strip the module (and more for each extra dot) from the importer's name
        pkg = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if base else pkg
    subs = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    return subs if len(subs) == len(node.names) else subs | {base}


def import_graph(deferred=False):
    """``{module: {modules it imports}}``; ``deferred=True`` adds the imports inside functions."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for node in (_all_nodes if deferred else _import_time_nodes)(tree.body):
            targets |= {t for t in _resolve(module, node) if t in MODULES and t != module}
        graph[module] = targets
    return graph


def find_cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_slimkit_imports():
    graph, full = import_graph(), import_graph(deferred=True)
    assert len(graph) == len(MODULES) > 50
    assert "slimkit.registry" in graph["slimkit.compress.base"]  # from slimkit.registry import Registry
    assert "slimkit.comm._registry" in graph["slimkit.comm.hook"]
    assert "slimkit.data.readers" in graph["slimkit.data.sets"]  # from slimkit.data import readers
    assert "slimkit.data" not in graph["slimkit.data.sets"]  # ... needs the submodule, not the package
    # an import inside a function: deferred graph only
    assert "slimkit.onnx_runtime" in full["slimkit.profile.runtimes"] - graph["slimkit.profile.runtimes"]


def test_finder_reports_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("deferred", [False, True], ids=["import-time", "with-deferred"])
def test_no_import_cycles(deferred):
    cycles = find_cycles(import_graph(deferred))
    assert cycles == [], "import cycles among slimkit modules: " + "; ".join(" <-> ".join(c) for c in cycles)
