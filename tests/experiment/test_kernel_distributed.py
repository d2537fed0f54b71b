"""Blocked kernels into memory maps on disk, locally and as Ray tasks, resumable (issue 21)."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")  # pdlt.experiment imports torch

import pdlt  # noqa: E402
from pdlt.experiment import kernel_distributed as KD  # noqa: E402

X = np.random.default_rng(4).standard_normal((45, 6))
MLP = pdlt.MLP(n0=6, width=8, depth=5, activation="gelu", C_b=0.1, C_W=1.7)


def _local(layers=None, x2=None, block=10):
    return pdlt.kernel_matrix(MLP, X, x2, layers=layers, block_size=block, threads=1)


def test_local_backend_equals_kernel_matrix(tmp_path):
    res = KD.distributed_kernel_matrix(MLP, X, tmp_path / "k", layers="all", block_size=10,
                                       progress=False)
    ref = _local(layers="all")
    for g in ("K", "Theta"):
        assert isinstance(res[g], np.memmap)
        np.testing.assert_array_equal(res[g], ref[g])
    back = np.load(tmp_path / "k" / "K.npy", mmap_mode="r")
    np.testing.assert_array_equal(back, ref.K)


def test_cross_kernel(tmp_path):
    xt = np.random.default_rng(5).standard_normal((13, 6))
    res = KD.distributed_kernel_matrix(MLP, xt, tmp_path / "k", x2=X, block_size=10,
                                       progress=False)
    ref = pdlt.kernel_matrix(MLP, xt, X, block_size=10, threads=1)
    np.testing.assert_array_equal(res.Theta, ref.Theta)


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    d = tmp_path / "k"
    monkeypatch.setattr(KD, "_INTERRUPT_AFTER", 4)
    with pytest.raises(KeyboardInterrupt):
        KD.distributed_kernel_matrix(MLP, X, d, block_size=10, progress=False)
    man = json.loads((d / "manifest.json").read_text())
    assert len(man["done"]) == 4
    monkeypatch.setattr(KD, "_INTERRUPT_AFTER", None)
    calls = []
    orig = KD._block_task
    monkeypatch.setattr(KD, "_block_task", lambda *a: calls.append(1) or orig(*a))
    res = KD.distributed_kernel_matrix(MLP, X, d, block_size=10, progress=False)
    assert len(calls) == 15 - 4          # 5 x 5 blocks, upper triangle: 15
    ref = _local()
    np.testing.assert_array_equal(res.K, ref.K)
    np.testing.assert_array_equal(res.Theta, ref.Theta)


def test_directory_of_another_kernel_is_refused(tmp_path):
    d = tmp_path / "k"
    KD.distributed_kernel_matrix(MLP, X, d, block_size=10, progress=False)
    with pytest.raises(ValueError, match="holds a different kernel.*block_size"):
        KD.distributed_kernel_matrix(MLP, X, d, block_size=12, progress=False)
    with pytest.raises(ValueError, match="holds a different kernel"):
        KD.distributed_kernel_matrix(MLP, X + 1e-3, d, block_size=10, progress=False)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable pdlt kernel manifest"):
        KD.distributed_kernel_matrix(MLP, X, d, block_size=10, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="backend must be 'local' or 'ray'"):
        KD.distributed_kernel_matrix(MLP, X, tmp_path, backend="spark")
    with pytest.raises(ValueError, match="block_size"):
        KD.distributed_kernel_matrix(MLP, X, tmp_path, block_size=0)


def test_ray_two_workers_equals_local(ray2, tmp_path):
    """Same blocks, same code; numpy's vectorized atan2/exp may round the last bit
    differently for differently aligned buffers, so equal to 1e-12 of each
    entry's Cauchy-Schwarz scale (the issue's criterion; measured: a few ulps)."""
    res = KD.distributed_kernel_matrix(MLP, X, tmp_path / "k", layers=[2, 5], block_size=23,
                                       backend="ray", progress=False)
    ref = _local(layers=[2, 5], block=23)
    for g in ("K", "Theta"):
        d = np.sqrt(np.diagonal(ref[g], axis1=1, axis2=2))
        err = np.abs(res[g] - ref[g]) / (d[:, :, None] * d[:, None, :])
        assert err.max() < 1e-12
    assert ray2.is_initialized(), "an existing Ray session must be left running"
