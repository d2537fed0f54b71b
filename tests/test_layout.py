"""Project layout rules that keep the suite collectable and the core light."""

import pathlib
import subprocess
import sys
from collections import Counter

TESTS = pathlib.Path(__file__).parent


def test_test_module_basenames_are_unique():
    # pytest's default import mode cannot collect two test modules of one name
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]


def test_core_imports_without_torch_matplotlib_sklearn():
    code = ("import sys\n"
            "for m in ('torch', 'matplotlib', 'sklearn', 'ray'):\n    sys.modules[m] = None\n"
            "import pdlt, pdlt.theory, pdlt.gaussian, pdlt.learning, pdlt.activations, "
            "pdlt.network\n"
            "import numpy as np\n"
            "pdlt.flow(pdlt.MLP(n0=2, width=3, depth=3, activation='gelu'), np.eye(2))\n"
            "pdlt.criticality('tanh'); pdlt.optimal_aspect_ratio('relu')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
