"""The package's shape, read from its source (nothing is imported or run).

* no import circles in ``src/pdlt``: an import inside a function counts as
  much as one at the top of a module (a function-level import that only
  dodges a circle is still a circle);
* the numpy/scipy core (``pdlt.theory``, ``pdlt.gaussian``, ``pdlt.learning``,
  ``pdlt.activations``, ``pdlt.network`` and the private helpers they use)
  reaches no module that imports torch, at any level;
* the layers point one way: experiment and learning sit on the theory, report
  and the CLI on top; an edge up the stack is listed below with its reason,
  and the list must shrink, never grow.

(``tests/test_layout.py`` checks the same core at run time: it imports with
torch hidden.)
"""

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"

TORCH_FREE = ("pdlt.theory", "pdlt.gaussian", "pdlt.learning", "pdlt.activations",
              "pdlt.network", "pdlt._validation", "pdlt._progress", "pdlt._pass_rule")

#: the layers below each layer (a layer is ``pdlt.<first part>``; ``pdlt`` is the
#: package's own __init__)
BELOW = {
    "activations": set(),
    "_progress": set(),
    "_pass_rule": set(),
    "gaussian": {"activations"},
    "network": {"activations"},
    "theory": {"activations", "gaussian", "network", "_progress"},
    "_validation": {"network", "theory"},
    "learning": {"activations", "gaussian", "network", "theory", "_validation", "_progress"},
    "experiment": {"activations", "gaussian", "network", "theory", "learning", "_validation",
                   "_progress", "_pass_rule"},
    "torch": {"activations", "gaussian", "network", "theory", "experiment", "_validation"},
    "pdlt": {"activations", "gaussian", "network", "theory", "_validation"},
    "report": {"pdlt", "activations", "gaussian", "network", "theory", "learning",
               "experiment", "_validation", "_progress", "_pass_rule"},
    "_commands": {"pdlt", "activations", "gaussian", "network", "theory", "learning",
                  "experiment", "report", "_validation", "_progress"},
    "cli": {"pdlt", "_commands", "_validation"},
}

#: edges up the stack that exist today (module, imported module): each one a
#: function-level import to move down (issue 20); remove an entry when it goes
UPWARD = {
    # the diagnosis's optional representation-learning estimate lives in learning
    ("pdlt.theory.diagnosis", "pdlt.learning.finite_training"),
    # the torch bridge prints with the CLI's table formatter
    ("pdlt.experiment.bridge", "pdlt._commands.common"),
}


def modules(root):
    """``{dotted name: (path, is_package)}`` of every module below ``root/pdlt``."""
    out = {}
    for path in sorted((root / "pdlt").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def import_graph(root):
    """Static imports of every module, at any nesting level.

    Returns ``(edges, external)``: ``edges[m][t]`` the line numbers where module
    ``m`` imports pdlt module ``t`` (``from pkg import sub`` counts as importing
    ``pkg.sub`` when that is a module, else ``pkg``); ``external[m][name]`` those
    where it imports the top-level package ``name`` from outside pdlt.
    """
    mods = modules(root)

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges, external = {}, {}
    for m, (path, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rpartition(".")[0]
        out, ext = edges.setdefault(m, {}), external.setdefault(m, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                           for a in node.names]
            for t in targets:
                if t == "pdlt" or t.startswith("pdlt."):
                    r = resolve(t)
                    if r is not None and r != m:
                        out.setdefault(r, []).append(node.lineno)
                else:
                    ext.setdefault(t.split(".")[0], []).append(node.lineno)
    return edges, external


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _describe(comp, edges):
    lines = [" <-> ".join(comp)]
    for a in comp:
        for b, where in sorted(edges[a].items()):
            if b in comp:
                lines.append(f"    {a} -> {b} (line {', '.join(map(str, where))})")
    return "\n".join(lines)


def _path_to(start, edges, stop):
    """A shortest import chain from ``start`` to a module for which ``stop(m)``, or None."""
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            if stop(v):
                chain = []
                while v is not None:
                    chain.append(v)
                    v = prev[v]
                return chain[::-1]
            for w in sorted(edges.get(v, {})):
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC)


def _write(root, files):
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_the_checks_see_function_level_and_relative_imports(tmp_path):
    # a circle hidden in a function, one through a package __init__, and a torch import
    # two steps away: the same functions the real checks use must find all three
    _write(tmp_path, {
        "pdlt/__init__.py": "",
        "pdlt/a.py": "def f():\n    from . import b\n",
        "pdlt/b.py": "from pdlt.a import f\n",
        "pdlt/sub/__init__.py": "from .c import g\n",
        "pdlt/sub/c.py": "def g():\n    from ..sub import g as h\n    import pdlt.d\n",
        "pdlt/d.py": "def t():\n    import torch.nn\n",
        "pdlt/e.py": "import numpy\nfrom pdlt import a\n",
    })
    edges, external = import_graph(tmp_path)
    assert edges["pdlt.a"] == {"pdlt.b": [2]} and edges["pdlt.b"] == {"pdlt.a": [1]}
    assert edges["pdlt.e"] == {"pdlt.a": [2]} and external["pdlt.e"] == {"numpy": [1]}
    assert cycles(edges) == [["pdlt.a", "pdlt.b"], ["pdlt.sub", "pdlt.sub.c"]]
    chain = _path_to("pdlt.sub", edges, lambda m: "torch" in external[m])
    assert chain == ["pdlt.sub", "pdlt.sub.c", "pdlt.d"]


def test_the_graph_covers_the_package(graph):
    edges, external = graph
    # a few edges of every kind that must be seen: top-level relative, function-level,
    # ``from package import module``, and torch where it is used
    assert "pdlt.experiment._plan" in edges["pdlt.experiment.ensemble"]
    assert "pdlt.learning.finite_training" in edges["pdlt.theory.diagnosis"]    # in a function
    assert "pdlt.theory.criticality" in edges["pdlt.theory"]
    assert "torch" in external["pdlt.experiment.ensemble"]


def test_no_import_cycles(graph):
    edges, _ = graph
    found = cycles(edges)
    assert not found, "import circles (break them with a leaf module):\n" + "\n".join(
        _describe(c, edges) for c in found)


@pytest.mark.parametrize("root", TORCH_FREE)
def test_core_never_reaches_torch(graph, root):
    edges, external = graph
    bad = {}
    for m in edges:
        if m == root or m.startswith(root + "."):
            chain = _path_to(m, edges, lambda v: "torch" in external[v])
            if chain is not None:
                bad[m] = " -> ".join(chain) + f" (imports torch at line {external[chain[-1]]['torch']})"
    assert not bad, f"{root} must import without torch:\n" + "\n".join(bad.values())


def test_layers_point_down(graph):
    edges, _ = graph

    def layer(m):
        parts = m.split(".")
        return parts[1] if len(parts) > 1 else "pdlt"

    up = set()
    for a, outs in edges.items():
        for b in outs:
            la, lb = layer(a), layer(b)
            if la != lb and lb not in BELOW[la]:
                up.add((a, b))
    assert up <= UPWARD, f"imports up the stack: {sorted(up - UPWARD)}"
    assert UPWARD <= up, f"gone, remove from UPWARD: {sorted(UPWARD - up)}"
