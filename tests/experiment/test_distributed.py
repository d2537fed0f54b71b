"""Sharded ensembles (pdlt.experiment.distributed): merge exactness, checkpoints, Ray.

What "identical" means here: the sharded result adds the same per-network
sufficient statistics as the single pass, only grouped differently, so it
may differ by float rounding of those additions. Every comparison allows
``RTOL = 1e-11`` of the scale of the statistic (its largest |mean| over
layers and inputs), about 1e4 float64 eps: the sums run over <= 250 networks
and the connected estimators subtract products of means, which amplifies
the relative rounding of the sums by the ratio of those products to their
difference. A real merge error (a group counted twice or lost) moves the
estimate by O(stderr), 1e6-1e10 times more.

The Ray tests start one local Ray instance with two CPUs for the whole
module (start-up takes 10-20 s) and skip, saying why, where ray does not
import.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from pdlt.experiment import Ensemble  # noqa: E402
from pdlt.experiment import distributed as D  # noqa: E402
from pdlt.experiment.estimators import group_of, n_groups  # noqa: E402

EPS = np.finfo(float).eps
RTOL = 1e-11

# one configuration for the whole module: 2 inputs, 3 layers, output width 2 so
# that pair statistics exist at every layer; chunks of 40 so that shards cut chunks
MLP = pdlt.MLP(n0=3, width=6, depth=3, activation="tanh", C_b=0.1, n_out=2)
X = np.random.default_rng(0).normal(size=(2, 3))
STATS = ["K", "V", "Theta", "A", "B", "D", "F"]
M = 250
SEED = 3


def ensemble(**kw):
    return Ensemble(MLP, networks=M, seed=SEED, chunk_size=40, **kw)


@pytest.fixture(scope="module")
def reference():
    """The plain local single-pass result."""
    return ensemble().measure(X, stats=STATS, progress=False)


def assert_same(m, ref, stats=STATS):
    assert m.layers == ref.layers and m.n_networks == ref.n_networks
    for s in stats + (["V_pair", "V_same"] if "V" in stats else []):
        scale = max(np.nanmax(np.abs(ref[s].mean)), EPS)
        for field in ("mean", "stderr"):
            a, b = np.asarray(getattr(m[s], field)), np.asarray(getattr(ref[s], field))
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * scale,
                                       err_msg=f"{s}.{field} differs beyond rounding")


def assert_identical(m, ref, stats=STATS):
    for s in stats:
        np.testing.assert_array_equal(m[s].mean, ref[s].mean)
        np.testing.assert_array_equal(m[s].stderr, ref[s].stderr)


# ---------------------------------------------------------------------------
# shard layout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, shards", [(250, 1), (250, 3), (250, 100), (250, 137), (250, 250),
                                       (250, 999), (37, 5), (1, 4), (10_007, 64)])
def test_shard_ranges_cover_the_ensemble_in_order(n, shards):
    r = D.shard_ranges(n, shards)
    assert r[0][0] == 0 and r[-1][1] == n
    assert all(a < b for a, b in r) and all(r[k][1] == r[k + 1][0] for k in range(len(r) - 1))
    assert len(r) == min(shards, n)
    sizes = [b - a for a, b in r]
    assert max(sizes) - min(sizes) <= -(-n // n_groups(n)) + 1  # near-equal
    if shards <= n_groups(n):  # boundaries on group boundaries: no group is split
        starts = np.array([a for a, _ in r[1:]], dtype=np.int64)
        assert np.all(group_of(starts, n) != group_of(starts - 1, n))


def test_subtract_done_ranges():
    assert D._subtract([(0, 10), (10, 20)], [(0, 10)]) == [(10, 20)]
    assert D._subtract([(0, 10), (10, 20)], [(3, 5), (8, 12)]) == [(0, 3), (5, 8), (12, 20)]
    assert D._subtract([(0, 20)], [(0, 20)]) == []


# ---------------------------------------------------------------------------
# merge exactness, local (no Ray needed)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shards", [1, 3, 7, 100, 137, 250])
def test_local_sharded_equals_single_pass(reference, shards):
    # 1..100 shards: group-aligned; 137 and 250: groups (2-3 networks) split across shards
    assert_same(ensemble().measure(X, stats=STATS, shards=shards, progress=False), reference)


def test_sharded_single_input_and_autodiff_statistics():
    mlp = pdlt.MLP(n0=1, width=3, depth=2, activation="tanh", n_out=2)
    ens = Ensemble(mlp, networks=60, seed=1, chunk_size=16)
    stats = ["K", "V", "P", "Q"]
    ref = ens.measure(K1=1.3, stats=stats, progress=False)
    for shards in (4, 90):
        assert_same(ens.measure(K1=1.3, stats=stats, shards=shards, progress=False), ref, stats)


def test_sharding_does_not_depend_on_memory_budget_or_chunks(reference):
    m = Ensemble(MLP, networks=M, seed=SEED, memory_budget=50_000).measure(
        X, stats=STATS, shards=9, progress=False)
    assert_same(m, reference)


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------

def _count_shards(monkeypatch):
    calls = []
    real = D.range_sums

    def counting(ens, plan, a, b):
        calls.append((a, b))
        return real(ens, plan, a, b)
    monkeypatch.setattr(D, "range_sums", counting)
    return calls


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, monkeypatch, reference):
    ck = tmp_path / "run.npz"
    full = ensemble().measure(X, stats=STATS, shards=5, progress=False)
    monkeypatch.setattr(D, "_INTERRUPT_AFTER", 2)
    with pytest.raises(KeyboardInterrupt):
        ensemble().measure(X, stats=STATS, shards=5, checkpoint=ck, progress=False)
    assert ck.exists()
    monkeypatch.setattr(D, "_INTERRUPT_AFTER", None)
    calls = _count_shards(monkeypatch)
    resumed = ensemble().measure(X, stats=STATS, shards=5, checkpoint=ck, progress=False)
    assert len(calls) == 3, f"resume recomputed {calls}: only the 3 missing shards should run"
    assert_identical(resumed, full)  # same layout, same merge order: bit for bit
    assert_same(resumed, reference)
    # a finished checkpoint answers without computing anything
    calls.clear()
    again = ensemble().measure(X, stats=STATS, shards=5, checkpoint=ck, progress=False)
    assert calls == []
    assert_identical(again, full)


def test_resume_with_another_shard_count(tmp_path, monkeypatch, reference):
    ck = tmp_path / "run.npz"
    monkeypatch.setattr(D, "_INTERRUPT_AFTER", 3)
    with pytest.raises(KeyboardInterrupt):
        ensemble().measure(X, stats=STATS, shards=120, checkpoint=ck, progress=False)
    monkeypatch.setattr(D, "_INTERRUPT_AFTER", None)
    calls = _count_shards(monkeypatch)
    resumed = ensemble().measure(X, stats=STATS, shards=7, checkpoint=ck, progress=False)
    assert sum(b - a for a, b in calls) == M - sum(b - a for a, b in D.shard_ranges(M, 120)[:3])
    assert_same(resumed, reference)


def test_stale_or_foreign_checkpoint_is_refused(tmp_path):
    ck = tmp_path / "run.npz"
    ensemble().measure(X, stats=["K"], shards=3, checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match=r"different measurement \(seed: checkpoint 3 vs now 4"):
        Ensemble(MLP, networks=M, seed=4).measure(X, stats=["K"], checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="different measurement.*networks"):
        Ensemble(MLP, networks=M + 1, seed=SEED).measure(X, stats=["K"], checkpoint=ck)
    with pytest.raises(ValueError, match="different measurement.*stats"):
        ensemble().measure(X, stats=["K", "Theta"], checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="different measurement.*inputs_sha256"):
        ensemble().measure(X + 1e-12, stats=["K"], checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="different measurement.*C_W"):
        Ensemble(MLP.with_(C_W=1.0 + 1e-9), networks=M, seed=SEED).measure(
            X, stats=["K"], checkpoint=ck, progress=False)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable pdlt checkpoint.*delete it"):
        ensemble().measure(X, stats=["K"], checkpoint=bad, progress=False)


# ---------------------------------------------------------------------------
# arguments, lazy import
# ---------------------------------------------------------------------------

def test_bad_arguments():
    ens = ensemble()
    with pytest.raises(ValueError, match="backend must be 'local' or 'ray'; got 'spark'"):
        ens.measure(X, backend="spark")
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        ens.measure(X, shards=0)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        ens.measure(X, backend="ray", workers=0)
    with pytest.raises(ValueError, match="address=.*only used by backend='ray'"):
        ens.measure(X, address="auto")


def test_local_backend_never_imports_ray(tmp_path):
    code = (
        "import sys, numpy as np, pdlt\n"
        "from pdlt.experiment import Ensemble\n"
        "mlp = pdlt.MLP(n0=1, width=4, depth=2)\n"
        f"Ensemble(mlp, networks=20).measure(K1=1.0, shards=3, checkpoint={str(tmp_path / 'c.npz')!r})\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ray_says_how_to_install():
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'pdlt\[ray\]'"):
            ensemble().measure(X, stats=["K"], backend="ray", progress=False)
    else:
        pytest.skip("ray is installed: the missing-ray error cannot be produced here")


CLI_ARGS = ["measure", "--activation", "tanh", "--depth", "3", "--width", "6", "--n-out", "2",
            "--networks", "120", "--stats", "K,V,Theta", "--json"]


def test_cli_sharded_checkpoint_equals_plain(run_cli, tmp_path):
    code, plain, err = run_cli(*CLI_ARGS)
    assert code == 0 and err == ""
    ck = tmp_path / "c.npz"
    code, out, err = run_cli(*CLI_ARGS, "--shards", "4", "--checkpoint", str(ck))
    assert code == 0 and err == "" and ck.exists()
    a, b = json.loads(plain), json.loads(out)
    for la, lb in zip(a["layers"], b["layers"]):
        for k in ("K", "V", "Theta"):
            np.testing.assert_allclose(lb[k]["mean"], la[k]["mean"], rtol=1e-11, atol=1e-14)
    code, _, err = run_cli(*CLI_ARGS, "--shards", "0")
    assert code == 2 and "shards" in err
    code, _, err = run_cli(*CLI_ARGS, "--address", "auto")
    assert code == 2 and "--backend ray" in err


# ---------------------------------------------------------------------------
# Ray: one local instance with two workers for the whole module
# ---------------------------------------------------------------------------

def test_ray_two_workers_equals_local(ray2, reference):
    assert ray2.cluster_resources()["CPU"] == 2
    m = ensemble().measure(X, stats=STATS, backend="ray", shards=7, progress=False)
    assert_same(m, reference)
    # groups split across shards merge exactly too; default shard count
    assert_same(ensemble().measure(X, stats=STATS, backend="ray", shards=137, progress=False),
                reference)
    assert_same(ensemble().measure(X, stats=STATS, backend="ray", progress=False), reference)
    assert ray2.is_initialized(), "an existing Ray session must be left running"


def test_ray_killed_worker_is_retried(ray2, reference, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    start = D.shard_ranges(M, 5)[2][0]
    monkeypatch.setattr(D, "_FAULT", {"marker": str(marker), "start": start})
    m = ensemble().measure(X, stats=STATS, backend="ray", shards=5, progress=False)
    assert marker.exists(), "the fault hook did not fire: no worker was killed"
    assert int(marker.read_text()) > 0
    assert_same(m, reference)


def test_ray_resume_after_driver_interrupt(ray2, reference, tmp_path, monkeypatch):
    ck = tmp_path / "ray.npz"
    full = ensemble().measure(X, stats=STATS, backend="ray", shards=6, progress=False)
    monkeypatch.setattr(D, "_INTERRUPT_AFTER", 2)
    with pytest.raises(KeyboardInterrupt):
        ensemble().measure(X, stats=STATS, backend="ray", shards=6, checkpoint=ck,
                           progress=False)
    monkeypatch.setattr(D, "_INTERRUPT_AFTER", None)
    with np.load(ck) as f:
        done = json.loads(str(f["__header__"]))["done"]
    assert len(done) >= 2
    resumed = ensemble().measure(X, stats=STATS, backend="ray", shards=6, checkpoint=ck,
                                 progress=False)
    assert_identical(resumed, full)
    assert_same(resumed, reference)


def test_cli_ray_backend_equals_local(ray2, run_cli):
    code, plain, _ = run_cli(*CLI_ARGS)
    code, out, _ = run_cli(*CLI_ARGS, "--backend", "ray", "--shards", "3")
    assert code == 0
    a, b = json.loads(plain), json.loads(out)
    for la, lb in zip(a["layers"], b["layers"]):
        for k in ("K", "V", "Theta"):
            np.testing.assert_allclose(lb[k]["mean"], la[k]["mean"], rtol=1e-11, atol=1e-14)
            np.testing.assert_allclose(lb[k]["stderr"], la[k]["stderr"], rtol=1e-9, atol=1e-14)
