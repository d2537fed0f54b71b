"""The torch backend of kernel_matrix (issue 21) against the numpy reference.

Both paths evaluate the same closed forms in the same stable rearrangements,
in float64; each layer's pair terms are accurate to a few ulps of the entry's
Cauchy-Schwarz scale sqrt(K_aa K_bb) (pdlt.gaussian._closed), and the two
orders of operations differ by at most that per layer. Propagated through L
layers with susceptibilities <= ~1 (these networks are near criticality), the
two results differ by at most ~16 L ulps of that scale: the tolerance below.
"""

import numpy as np
import pytest
import torch

import pdlt
from pdlt.experiment.kernel_torch import torch_kernel_matrix

EPS = np.finfo(float).eps
RNG = np.random.default_rng(2)
X = RNG.standard_normal((70, 5))
X2 = RNG.standard_normal((31, 5))


def _mlp(name, depth=8, **kw):
    cw = {"relu": 2.0, "gelu": 1.8, "leaky_relu": 1.9}.get(name, 1.2)
    return pdlt.MLP(n0=5, width=8, depth=depth, activation=name, C_W=cw, C_b=0.1, lambda_b=0.2,
                    lambda_W=0.7, **kw)


def _cs_err(a, b, da, db):
    """max |a - b| / sqrt(K_aa K_bb) over entries (da, db: diagonals)."""
    return float(np.max(np.abs(a - b) / np.sqrt(np.abs(da[..., :, None] * db[..., None, :]))))


def _diag(mlp, x, layers):
    from pdlt.theory.kernel_blocks import diagonal_flow
    d = diagonal_flow(mlp, x)
    idx = [l - 1 for l in layers]
    return {"K": d.K[idx], "Theta": d.Theta[idx]}


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "erf", "gelu", "sin", "linear"])
def test_cpu_equals_numpy_to_roundoff(name):
    mlp = _mlp(name)
    layers = [1, 4, 8]
    ref = pdlt.kernel_matrix(mlp, X, layers=layers, block_size=32)
    got = torch_kernel_matrix(mlp, X, layers=layers, device="cpu", block_size=25)
    d = _diag(mlp, X, layers)
    for g in ("K", "Theta"):
        assert got[g].shape == (3, 70, 70)
        assert _cs_err(got[g], ref[g], d[g], d[g]) <= 16 * 8 * EPS
        assert np.array_equal(got[g], got[g].transpose(0, 2, 1))      # exactly symmetric
        np.testing.assert_array_equal(np.diagonal(got[g], axis1=1, axis2=2), d[g])
    # cross kernel
    refx = pdlt.kernel_matrix(mlp, X, X2, get=["K"])
    gotx = torch_kernel_matrix(mlp, X, X2, get=["K"], device="cpu", block_size=16)
    assert gotx.Theta is None and gotx.K.shape == (1, 70, 31)
    assert _cs_err(gotx.K, refx.K, _diag(mlp, X, [8])["K"], _diag(mlp, X2, [8])["K"]) \
        <= 16 * 8 * EPS


def test_residual_mlp_and_detects_a_wrong_layer():
    mlp = pdlt.MLP(n0=5, width=5, depth=7, activation="erf", C_b=0.1, C_W=1.2, gamma=0.6, xi=0.8)
    ref = pdlt.kernel_matrix(mlp, X, layers="all")
    got = torch_kernel_matrix(mlp, X, layers="all", device="cpu", block_size=40)
    d = _diag(mlp, X, range(1, 8))
    for g in ("K", "Theta"):
        assert _cs_err(got[g], ref[g], d[g], d[g]) <= 16 * 7 * EPS
    # the comparison has power: one layer off is far outside the tolerance
    assert _cs_err(got.K[1:], ref.K[:-1], d["K"][1:], d["K"][:-1]) > 1e3 * 16 * 7 * EPS


def test_refusals_name_the_fix():
    with pytest.raises(ValueError, match="no closed form.*pdlt.kernel_matrix"):
        torch_kernel_matrix(_mlp("tanh"), X, device="cpu")
    with pytest.raises(MemoryError, match="memory_budget"):
        torch_kernel_matrix(_mlp("relu"), X, device="cpu", memory_budget=1000)
    with pytest.raises(ValueError, match="'cpu', 'cuda'"):
        torch_kernel_matrix(_mlp("relu"), X, device="tpu")
    with pytest.raises(FloatingPointError, match="overflowed"):
        torch_kernel_matrix(pdlt.MLP(n0=5, width=8, depth=200, activation="relu", C_W=100.0),
                            X, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_numpy_to_roundoff():
    for name in ("relu", "erf", "gelu"):
        mlp = _mlp(name)
        ref = pdlt.kernel_matrix(mlp, X)
        got = torch_kernel_matrix(mlp, X, device="cuda")
        d = _diag(mlp, X, [8])
        for g in ("K", "Theta"):
            # CUDA's atan2/sqrt/exp are correctly rounded to within a few ulps too
            assert _cs_err(got[g], ref[g], d[g], d[g]) <= 16 * 8 * EPS
