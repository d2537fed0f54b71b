"""Sphinx configuration for the pdlt documentation site.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

Every figure is computed during the build (matplotlib's ``plot`` directive),
every ``doctest``/``testcode`` block runs under ``-b doctest``, the CLI texts
come from the argparse parser, and the API pages from ``__all__``.
"""

import os
import sys
import warnings

# matplotlib reports a formula it cannot draw as a Python warning, which
# Sphinx's -W does not see: make it an error
warnings.filterwarnings("error", message="Could not render math expression")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
# the source tree first, so a checkout documents itself even when another
# copy of pdlt is installed
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import pdlt  # noqa: E402

project = "pdlt"
author = "the pdlt authors"
copyright = "the pdlt authors; theory: Roberts & Yaida, with Hanin (arXiv:2106.10165)"
release = version = pdlt.__version__

extensions = [
    "sphinx.ext.autodoc",
    
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
    "matplotlib.sphinxext.mathmpl",
    "pdlt_docs",
]

exclude_patterns = ["_build"]
templates_path = []
root_doc = "index"
nitpicky = True
# names outside pdlt: no intersphinx (the build must work offline), so
# references to numpy, torch, ray and the standard library stay plain text
nitpick_ignore_regex = [
    ("py:.*", r"(numpy|np|scipy|torch|nn|ray|matplotlib|sklearn|argparse|collections|typing)(\..*)?"),
    ("py:.*", r"(int|float|str|bool|dict|list|tuple|callable|None|object|Callable|ArrayFn)"),
]

# autodoc / numpydoc: the types live in the numpydoc sections, not in signatures
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "__init__, __new__"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# doctest: the site's own blocks; docstring examples run under
# ``pytest --doctest-modules`` (with their module's globals), not twice here
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import importlib.util
import numpy as np
import pdlt
import os
# the Ray example runs wherever ray is installed (CI installs it);
# PDLT_DOCS_SKIP_RAY=1 skips it on a machine too loaded to start Ray
HAVE_RAY = (importlib.util.find_spec("ray") is not None
            and not os.environ.get("PDLT_DOCS_SKIP_RAY"))
"""

# figures: computed at build time, shown with the code that made them
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_pre_code = "import numpy as np\nimport matplotlib.pyplot as plt\nimport pdlt\n"
plot_rcparams = {"figure.figsize": (6.4, 3.6), "figure.autolayout": True, "font.size": 10,
                 "axes.grid": True, "grid.alpha": 0.3}
plot_apply_rcparams = True

# math on the guide pages is drawn by matplotlib (mathmpl: offline, no LaTeX);
# :math: in docstrings goes through MathJax when a browser can fetch it
mathmpl_fontsize = 12.0
mathmpl_srcset = ["2x"]

# MathJax (for ``.. math::`` in docstrings) comes from its CDN by default;
# PDLT_DOCS_MATHJAX points at a local copy for viewing offline, e.g.
# "file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS_CHTML"
# (Debian's libjs-mathjax)
if os.environ.get("PDLT_DOCS_MATHJAX"):
    mathjax_path = os.environ["PDLT_DOCS_MATHJAX"]

html_theme = "alabaster"
html_title = f"pdlt {release}"
html_static_path = ["_static"]
html_css_files = ["pdlt.css"]
html_theme_options = {
    "description": "The effective theory of deep networks, computable and checked",
    "page_width": "1120px",
    "sidebar_width": "250px",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
html_show_sourcelink = False
