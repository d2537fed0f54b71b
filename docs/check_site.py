"""Check the built site: internal links, the API's coverage, executable code.

Run after the HTML build::

    python docs/check_site.py docs/_build/html

Three checks, each of which fails with a list of what is wrong:

1. every internal ``href``/``src`` of every built page resolves: the file
   exists and, for ``#fragment``, an element with that ``id`` exists in it.
   External links (``http(s)://``) are only listed, not fetched: the build
   must work offline (use ``sphinx -b linkcheck`` where a network is
   available);
2. every name in the ``__all__`` of every public module of pdlt has an entry
   (an element whose ``id`` is its documented dotted name) on the API pages;
3. no page source holds a Python block that is not executed: code goes in
   ``doctest``/``testcode`` blocks (run by ``sphinx -b doctest``) or ``plot``
   directives (run by the HTML build). Plain ``code-block``/``::`` literal
   blocks are allowed only for shell commands.
"""

from __future__ import annotations

import os
import re
import sys
import types
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "name" in a:
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])


def _parse(path):
    page = _Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


def check_links(root):
    pages, errors, external = {}, [], set()
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(dirpath, name)
                pages[os.path.normpath(path)] = _parse(path)
    for path, page in sorted(pages.items()):
        for link in page.links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, mailto:, data:, ...
                if link.startswith(("http://", "https://")):
                    external.add(link)
                continue
            target, fragment = urldefrag(link)
            target = urlsplit(target).path  # drop ?v=... cache busters
            target_path = (path if not target
                           else os.path.normpath(os.path.join(os.path.dirname(path), unquote(target))))
            if os.path.isdir(target_path):
                target_path = os.path.join(target_path, "index.html")
            if not os.path.exists(target_path):
                errors.append(f"{os.path.relpath(path, root)}: {link} -> missing file")
                continue
            if fragment and target_path.endswith(".html"):
                ids = pages[os.path.normpath(target_path)].ids
                if unquote(fragment) not in ids:
                    errors.append(f"{os.path.relpath(path, root)}: {link} -> no id {fragment!r}")
    return len(pages), errors, sorted(external)


def check_api(root):
    sys.path.insert(0, os.path.join(HERE, "_ext"))
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    from pdlt_docs import canonical_map, public_modules

    mods = public_modules()
    canon, _ = canonical_map(mods)
    ids = set()
    api = os.path.join(root, "api")
    for name in os.listdir(api):
        if name.endswith(".html"):
            ids |= _parse(os.path.join(api, name)).ids
    missing, count = [], 0
    for mname, mod in mods.items():
        if f"module-{mname}" not in ids:
            missing.append(f"module {mname}")
        for attr in getattr(mod, "__all__", ()):
            obj = getattr(mod, attr)
            if isinstance(obj, types.ModuleType) or attr == "__version__":
                continue
            count += 1
            if canon[id(obj)] not in ids:
                missing.append(f"{mname}.{attr} (documented as {canon[id(obj)]})")
    return count, missing


_PY_LITERAL = re.compile(
    r"^\s*\.\. (code-block|code|sourcecode)::\s*(python|py|pycon|ipython)?\s*$")


def check_sources(srcdir):
    bad = []
    for dirpath, dirs, files in os.walk(srcdir):
        dirs[:] = [d for d in dirs if not d.startswith("_") and d != "api"]
        for name in files:
            if not name.endswith(".rst"):
                continue
            path = os.path.join(dirpath, name)
            lines = open(path, encoding="utf-8").read().splitlines()
            for i, line in enumerate(lines):
                m = _PY_LITERAL.match(line)
                if m and (m.group(2) or m.group(1) != "code-block"):
                    bad.append(f"{os.path.relpath(path, srcdir)}:{i + 1}: {line.strip()}")
                if m and m.group(1) == "code-block" and not m.group(2):
                    bad.append(f"{os.path.relpath(path, srcdir)}:{i + 1}: code-block without a language")
                if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
                    block = [l for l in lines[i + 1:i + 6] if l.strip()]
                    if block and block[0].lstrip().startswith(">>>"):
                        bad.append(f"{os.path.relpath(path, srcdir)}:{i + 1}: '>>>' in a literal block "
                                   "(use .. doctest::)")
    return bad


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.join(HERE, "_build", "html")
    n_pages, link_errors, external = check_links(root)
    n_names, missing = check_api(root)
    bad_blocks = check_sources(HERE)
    print(f"{n_pages} pages: {len(link_errors)} broken internal links; "
          f"{len(external)} external links not checked (offline)")
    print(f"{n_names} public names: {len(missing)} without an API entry")
    print(f"page sources: {len(bad_blocks)} Python blocks that would not run")
    for line in link_errors + missing + bad_blocks:
        print("  " + line)
    return 1 if (link_errors or missing or bad_blocks) else 0


if __name__ == "__main__":
    sys.exit(main())
