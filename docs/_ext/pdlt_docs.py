"""Sphinx extension for the pdlt site: the API pages, the CLI texts, and references.

Three things, each generated at build time so the site cannot drift from the code:

- ``api/<module>.rst`` for every public module of pdlt (no leading underscore
  in its dotted name), listing its ``__all__``. Each public object is
  documented exactly once, at the module that defines it (or, when that module
  is private, at the shallowest public module that exports it); every other
  module that re-exports it links there.
- ``.. pdlt-help:: [COMMAND]`` prints ``pdlt [COMMAND] --help`` from the
  argparse parser of :func:`pdlt.cli.build_parser`, and ``.. pdlt-run:: ARGS``
  runs ``pdlt ARGS`` and prints the command and its output (a nonzero exit
  status fails the build).
- A reference to any import path of a documented object (``pdlt.flow``,
  ``pdlt.theory.flow``, ``pdlt.theory.statistics.flow``) resolves to its one entry;
  a reference to a name that does not exist stays broken, and the nitpicky
  build fails on it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import shlex
import types

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective


# ---------------------------------------------------------------- public names

def public_modules():
    """Every importable public module of pdlt, sorted by dotted name."""
    import pdlt

    names = ["pdlt"]
    for info in pkgutil.walk_packages(pdlt.__path__, "pdlt."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    mods = {}
    for name in sorted(names):
        mods[name] = importlib.import_module(name)
    return mods


def _is_public_module(name):
    return name.startswith("pdlt") and not any(p.startswith("_") for p in name.split("."))


def canonical_map(mods):
    """``id(obj) -> dotted name`` where each exported object is documented.

    Rule: the defining module (``obj.__module__``) when it is public and lists
    the name in ``__all__``; otherwise the exporting public module with the
    fewest dots (then alphabetical). Submodules map to themselves.
    """
    exporters = {}  # id -> list of (module name, attribute name)
    objects = {}
    for mname, mod in mods.items():
        for attr in getattr(mod, "__all__", ()):
            obj = getattr(mod, attr)
            if isinstance(obj, types.ModuleType) or attr == "__version__":
                continue
            exporters.setdefault(id(obj), []).append((mname, attr))
            objects[id(obj)] = obj
    canon = {}
    for key, where in exporters.items():
        obj = objects[key]
        home = getattr(obj, "__module__", None)
        chosen = None
        for mname, attr in where:
            if mname == home and _is_public_module(home):
                chosen = (mname, attr)
        if chosen is None:
            # scalars/containers have no __module__: the deepest exporter is
            # where they are defined; functions from a private module go to
            # the shallowest public exporter
            if home is None:
                chosen = max(where, key=lambda w: (w[0].count("."), w[0]))
            else:
                chosen = min(where, key=lambda w: (w[0].count("."), w[0]))
        canon[key] = f"{chosen[0]}.{chosen[1]}"
    return canon, objects


def _summary(obj):
    """The first paragraph of a docstring, on one line (empty for data)."""
    if not (callable(obj) or inspect.isclass(obj)):
        return "a constant"
    doc = inspect.getdoc(obj) or ""
    para = doc.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in para.splitlines())


def _kind(obj):
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def write_api_pages(app):
    mods = public_modules()
    canon, objects = canonical_map(mods)
    app.env.pdlt_canonical = {}
    outdir = os.path.join(app.srcdir, "api")
    os.makedirs(outdir, exist_ok=True)
    pages = {}
    for mname, mod in mods.items():
        lines = [f"``{mname}``", "=" * (len(mname) + 4), "",
                 f".. automodule:: {mname}", "   :no-members:", "", ]
        documented, elsewhere, submodules = [], [], []
        for attr in getattr(mod, "__all__", ()):
            if attr == "__version__":
                continue
            obj = getattr(mod, attr)
            if isinstance(obj, types.ModuleType):
                submodules.append(obj.__name__)
                continue
            target = canon[id(obj)]
            if target == f"{mname}.{attr}":
                documented.append((attr, obj))
            else:
                elsewhere.append((attr, target))
        if submodules:
            lines += ["Submodules: " + ", ".join(f":mod:`{s}`" for s in submodules), ""]
        if elsewhere:
            lines += ["Also exported here (documented where they are defined):", ""]
            lines += [f"- ``{attr}``: :py:obj:`{target}`" for attr, target in elsewhere]
            lines += [""]
        if documented:
            lines += ["Defined here:", ""]
            lines += [f"- :py:obj:`~{mname}.{attr}`: {_summary(obj)}" for attr, obj in documented]
            lines += [""]
        for attr, obj in documented:
            kind = _kind(obj)
            if kind in ("class", "exception"):
                lines += [f".. auto{kind}:: {mname}.{attr}", "   :members:", ""]
            elif kind == "function":
                lines += [f".. autofunction:: {mname}.{attr}", ""]
            else:
                lines += [f".. autodata:: {mname}.{attr}", "   :annotation:", ""]
        if mname == "pdlt.cli":
            lines += ["The command-line texts: :doc:`/cli`.", ""]
        pages[mname] = "\n".join(lines)
    for mname, text in pages.items():
        path = os.path.join(outdir, f"{mname}.rst")
        old = open(path).read() if os.path.exists(path) else None
        if old != text:  # keep mtimes so incremental builds stay incremental
            with open(path, "w") as f:
                f.write(text)
    # the index of the API pages, by package
    index = ["API reference", "=============", "",
             "Every public module of pdlt and every name in its ``__all__``, generated",
             "from the docstrings at build time. Each object is documented once, where it",
             "is defined; the packages that re-export it link there.", "",
             ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {m}" for m in pages]
    text = "\n".join(index) + "\n"
    path = os.path.join(outdir, "index.rst")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    # every import path of every documented object -> its entry
    for mname, mod in mods.items():
        for attr in getattr(mod, "__all__", ()):
            obj = getattr(mod, attr)
            if isinstance(obj, types.ModuleType) or attr == "__version__":
                continue
            app.env.pdlt_canonical[f"{mname}.{attr}"] = canon[id(obj)]
    app.env.pdlt_modules = sorted(mods)
    app.pdlt_canon_by_id = canon


def _lookup(dotted):
    """The object at a dotted path (a module, then attributes), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                fields = getattr(obj, "__dataclass_fields__", {})
                if attr in fields:  # a dataclass field without a default
                    obj = fields[attr]
                    continue
                return None
        return obj
    return None


def resolve_alias(app, env, node, contnode):
    """Resolve a reference to any import path of a pdlt object.

    ``pdlt.theory.flow``, ``pdlt.flow`` and ``flow`` inside
    ``pdlt.theory.statistics`` all reach the one entry of
    ``pdlt.theory.statistics.flow``; ``Ensemble.measure`` inside
    ``pdlt.experiment.training`` reaches the method's entry. A name that
    exists but is private (``pdlt.gaussian._multi``) renders as plain code: it
    is not a broken link. A name that does not exist stays unresolved, and
    the nitpicky build fails on it.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    modname = node.get("py:module") or ""
    classname = node.get("py:class")
    candidates = [target]
    if modname:
        candidates.append(f"{modname}.{target}")
        if classname:
            candidates.append(f"{modname}.{classname}.{target}")
        parts = modname.split(".")
        candidates += [".".join(parts[:k] + [target]) for k in range(len(parts) - 1, 0, -1)]
    canon_by_id = getattr(app, "pdlt_canon_by_id", {})
    domain = env.get_domain("py")
    for cand in candidates:
        if not cand.startswith("pdlt"):
            continue
        head, tail = cand, ""
        obj = _lookup(cand)
        if obj is None:
            continue
        if isinstance(obj, types.ModuleType):
            canon = obj.__name__ if obj.__name__ in getattr(env, "pdlt_modules", ()) else None
        else:
            canon = canon_by_id.get(id(obj))
            if canon is None:
                # a method or attribute: map its owner, keep the last name
                head, _, tail = cand.rpartition(".")
                owner = _lookup(head)
                owner_canon = canon_by_id.get(id(owner)) if owner is not None else None
                canon = f"{owner_canon}.{tail}" if owner_canon else None
        if canon is not None:
            new = node.deepcopy()
            new["reftarget"] = canon
            hit = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                      canon, new, contnode)
            if hit is not None:
                return hit
            hit = domain.resolve_any_xref(env, node["refdoc"], app.builder, canon, new,
                                          contnode)
            if hit:
                return hit[0][1]
        # it exists but has no entry of its own (private, or a dataclass
        # field): plain code, not a broken link
        return contnode
    return None


def skip_foreign_members(app, what, name, obj, skip, options):
    """Leave out members a class inherits from outside pdlt (sklearn's
    ``set_*_request`` and friends)."""
    module = getattr(obj, "__module__", None) or ""
    qual = getattr(obj, "__qualname__", "") or ""
    if module.startswith(("sklearn", "builtins")) or "RequestMethod" in qual:
        return True
    return None


# ---------------------------------------------------------------------- the CLI

def _cli_parser():
    from pdlt.cli import build_parser

    return build_parser()


def cli_help(command=None, width=88):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps at $COLUMNS
    try:
        parser = _cli_parser()
        if command is None:
            return parser.format_help()
        for action in parser._actions:  # the one subparsers action
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict) and command in choices:
                return choices[command].format_help()
        raise ValueError(f"pdlt has no command {command!r}")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


class PdltHelp(SphinxDirective):
    """``.. pdlt-help:: [COMMAND]``: the argparse help text, generated now."""

    optional_arguments = 1

    def run(self):
        command = self.arguments[0] if self.arguments else None
        text = cli_help(command)
        node = nodes.literal_block(text, text)
        node["language"] = "text"
        return [node]


class PdltRun(SphinxDirective):
    """``.. pdlt-run:: ARGS``: run ``pdlt ARGS`` in-process and show its output."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"lines": directives.positive_int}

    def run(self):
        from pdlt.cli import main

        argv = shlex.split(self.arguments[0])
        out, err = io.StringIO(), io.StringIO()
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "88"
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv)
        finally:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
        if rc != 0:
            raise self.error(f"pdlt {' '.join(argv)} exited with {rc}: {err.getvalue()}")
        text = out.getvalue().rstrip("\n")
        if "lines" in self.options:
            kept = text.splitlines()[: self.options["lines"]]
            text = "\n".join(kept + ["..."])
        shown = f"$ pdlt {' '.join(argv)}\n{text}"
        node = nodes.literal_block(shown, shown)
        node["language"] = "text"
        node["classes"].append("pdlt-output")  # wrapped, not scrolled (pdlt.css)
        return [node]


def setup(app):
    app.connect("builder-inited", write_api_pages)
    app.connect("missing-reference", resolve_alias)
    app.connect("autodoc-skip-member", skip_foreign_members)
    app.add_directive("pdlt-help", PdltHelp)
    app.add_directive("pdlt-run", PdltRun)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
