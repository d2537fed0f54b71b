"""Shared configurations, tolerances, fixtures and helpers for the test suite.

Fixtures: ``rng``; ``run_cli`` (the ``pdlt`` command in process); ``critical_mlp``
(an MLP at its activation's critical point); ``regression_csvs`` (``pdlt fit``
inputs); ``ray2`` (a two-CPU Ray instance per test module). Markers: ``needs_torch``.
"""

import importlib.util
import json
import os

# Under pytest-xdist (``addopts``: one worker per core) each worker gets its share of
# the cores for BLAS, OpenMP and torch's intra-op threads, read when numpy and torch
# are first imported (after this line): two workers of two threads each on two cores
# would only contend. Set before any test imports them; a user's setting is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

import numpy as np  # noqa: E402  (after the thread settings)
import pytest

EPS = np.finfo(float).eps

# named configurations used across tests
SMOOTH = ["tanh", "erf", "sin", "sigmoid", "softplus", "swish", "gelu"]
KINKED = ["relu", "leaky_relu", "elu"]
ALL_NAMED = SMOOTH + KINKED + ["linear"]


def max_zscore(mean, stderr, theory, allowance=0.0):
    """Largest |mean - theory| / (stderr + allowance / 4) over all entries.

    ``allowance`` is a stated systematic (e.g. the O(1/n^2) truncation) added
    to 4 sigma: ``|dev| <= 4 stderr + allowance`` iff the result is < 4.
    """
    mean, stderr, theory = (np.asarray(a, float) for a in (mean, stderr, theory))
    dev = np.abs(mean - theory)
    return float(np.max(dev / (stderr + np.asarray(allowance, float) / 4.0 + 1e-300)))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def torch_available():
    """Whether PyTorch is installed (found, not imported: collecting stays fast)."""
    return importlib.util.find_spec("torch") is not None


#: skip a test (or, as ``pytestmark``, a module) that needs PyTorch (the ensemble engine)
needs_torch = pytest.mark.skipif(not torch_available(),
                                 reason="needs torch: pip install 'pdlt[torch]'")


class CliRun:
    """The ``pdlt`` command run in process, its output captured by ``capsys``.

    ``run_cli(*argv)`` returns ``(exit code, stdout, stderr)``;
    ``run_cli.json(*argv)`` asserts exit code 0 and an empty stderr and returns
    the parsed JSON on stdout.
    """

    def __init__(self, capsys):
        self._capsys = capsys

    def __call__(self, *argv):
        from pdlt.cli import main

        code = main(list(argv))
        out, err = self._capsys.readouterr()
        return code, out, err

    def json(self, *argv):
        code, out, err = self(*argv)
        assert code == 0 and err == "", f"pdlt {' '.join(argv)}: exit {code}, stderr {err!r}"
        return json.loads(out)


@pytest.fixture
def run_cli(capsys):
    """:class:`CliRun`: ``run_cli("flow", "--json") -> (code, out, err)``."""
    return CliRun(capsys)


@pytest.fixture
def regression_csvs(tmp_path):
    """Factory of ``pdlt fit`` inputs: ``regression_csvs(n_train, n_test, seed=0, header=False)``.

    Writes ``train.csv`` and ``test.csv`` in ``tmp_path`` (columns x1, x2, y with
    ``y = sin(x1 + x2)`` at standard-normal x; the header line only on the
    training file) and returns ``(train path, test path, Xa, ya, Xb, yb)``.
    """
    def make(n_train, n_test, seed=0, header=False):
        rng = np.random.default_rng(seed)
        Xa, Xb = rng.standard_normal((n_train, 2)), rng.standard_normal((n_test, 2))
        ya, yb = np.sin(Xa.sum(1)), np.sin(Xb.sum(1))
        tr, te = tmp_path / "train.csv", tmp_path / "test.csv"
        np.savetxt(tr, np.c_[Xa, ya], delimiter=",",
                   **(dict(header="x1,x2,y", comments="") if header else {}))
        np.savetxt(te, np.c_[Xb, yb], delimiter=",")
        return str(tr), str(te), Xa, ya, Xb, yb

    return make


@pytest.fixture(scope="session")
def critical_mlp():
    """:func:`pdlt.report.rows.critical_mlp`, the factory the report's cases use:
    ``critical_mlp(activation, width, depth, lambda_b, lambda_W, n0=1, n_out=width)``."""
    from pdlt.report.rows import critical_mlp

    return critical_mlp


def linear_newton_case(width):
    """Deep linear depth-2 MLP (no biases) and a 2-train/1-test problem whose one-Newton-step
    order-1/n prediction is exact at every width (tests/learning/test_finite_training.py)."""
    import pdlt
    X = np.array([[1.0, 0.3, -0.2], [0.1, -0.8, 0.5]])
    Xt = np.array([[0.4, 0.4, 0.9]])
    y = np.array([0.7, -0.3])
    mlp = pdlt.MLP(n0=3, width=width, depth=2, n_out=1, activation="linear", C_b=0.0, C_W=1.3,
                   lambda_b=0.0, lambda_W=0.9)
    return mlp, X, Xt, y


def powered(theory, measured, stderr, allowance=0.0, *, label="", factors=(0.5, 2.0),
            zero=True, max_resolution=None):
    """Assert an ensemble comparison passes AND could fail: the negative controls.

    The same comparison (:func:`pdlt.report.rows.compare`: ``|measured -
    theory| <= 4 stderr + allowance`` everywhere) must reject ``factor x
    theory`` for every factor in ``factors`` and, when ``zero`` and some theory
    entry is nonzero, the theory x0. ``max_resolution`` additionally bounds the
    comparison's resolution ``(4 stderr + allowance) / |theory|``.
    Returns the :class:`pdlt.report.rows.Comparison`.
    """
    from pdlt.report.rows import compare

    c = compare(theory, measured, stderr, allowance)
    assert c.passed, f"{label}: fails: {c.describe()}"
    if not c.relative:
        # a theory that is exactly zero: the comparison is an absolute bound, and every
        # multiple of the theory is the same theory (no control possible)
        return c
    fs = list(factors) + ([0.0] if zero and c.relative else [])
    weak = [f for f in fs if not c.rejects(f)]
    assert not weak, f"{label}: cannot reject theory x{weak}: {c.describe()}"
    if max_resolution is not None:
        assert c.resolution <= max_resolution, f"{label}: resolution too coarse: {c.describe()}"
    return c


@pytest.fixture(scope="module")
def ray2():
    """A local Ray instance with two CPUs for the test module (skips without ray)."""
    ray = pytest.importorskip(
        "ray", reason="ray is not installed (pip install 'pdlt[ray]'): Ray backend tests skipped")
    if ray.is_initialized():  # pragma: no cover - another module left Ray running
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
