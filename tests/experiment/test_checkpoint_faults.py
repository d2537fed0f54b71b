"""Fault injection: a checkpointed measurement killed (SIGKILL or SIGTERM) at
random moments resumes to the bit-identical result of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from pdlt.experiment import Ensemble  # noqa: E402

SHARDS = 24
STATS = ["K", "Theta", "V"]

# the child: one shard takes >= 150 ms (a sleep wrapped around the library's
# shard function), the API run writes a checkpoint after every shard (the CLI
# run keeps the default 10 s, so only the SIGTERM handler can save), and "ready" is
# printed once torch is imported, so kill times fall inside the measurement
CHILD = r"""
import sys, time
import numpy as np
import pdlt
from pdlt.experiment import Ensemble, distributed as D
mode, ck, out = sys.argv[1:4]
if mode == "api":
    D.CHECKPOINT_INTERVAL = 0.0  # SIGKILL leaves only the periodic checkpoints
_sums = D.range_sums
def slow(*a, **k):
    time.sleep(0.15)
    return _sums(*a, **k)
D.range_sums = slow
print("ready", flush=True)
if mode == "cli":
    from pdlt.cli import main
    sys.exit(main(["measure", "--activation", "tanh", "--depth", "3", "--width", "6",
                   "--networks", "240", "--seed", "5", "--K1", "0.8", "--stats", "K",
                   "--shards", "24", "--checkpoint", ck]))
mlp = pdlt.MLP(2, width=6, depth=3, activation="tanh")
X = np.array([[0.3, -0.5], [1.0, 0.2]])
res = Ensemble(mlp, networks=240, seed=5).measure(X, stats=["K", "Theta", "V"], shards=24,
                                                  checkpoint=ck, progress=False)
np.savez(out, **{f"{k}_{a}": getattr(res[k], a) for k in ["K", "Theta", "V"]
                 for a in ("mean", "stderr")})
"""


def _child(mode, ck, out):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(pdlt.__file__))] + sys.path))
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(ck), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _done(ck):
    if not os.path.exists(ck):
        return 0
    with np.load(ck, allow_pickle=False) as f:
        return len(json.loads(str(f["__header__"]))["done"])



def test_random_kills_resume_bit_identically(tmp_path):
    mlp = pdlt.MLP(2, width=6, depth=3, activation="tanh")
    X = np.array([[0.3, -0.5], [1.0, 0.2]])
    ref = Ensemble(mlp, networks=240, seed=5).measure(X, stats=STATS, shards=SHARDS,
                                                      progress=False)
    ck, out = tmp_path / "ck.npz", tmp_path / "out.npz"
    rng = np.random.default_rng(16)
    progress, kills = [], 0
    for attempt in range(4):
        p = _child("api", ck, out)
        assert p.stdout.readline().strip() == "ready"
        if attempt < 3:
            if attempt == 0:  # let the first run get going (slow machines import slowly)
                t0 = time.monotonic()
                while not ck.exists() and time.monotonic() - t0 < 60 and p.poll() is None:
                    time.sleep(0.01)
            # a random moment inside the >= 3.6 s of shard work
            time.sleep(rng.uniform(0.05, 0.6))
            sig = signal.SIGKILL if attempt % 2 == 0 else signal.SIGTERM
            p.send_signal(sig)
            kills += p.wait(timeout=60) != 0
            progress.append(_done(ck))
        else:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    # the kills landed mid-run: some shards saved, not all
    assert kills == 3 and 0 < progress[0] and progress[-1] < SHARDS, progress
    # each run resumed from where the previous one stopped
    assert progress == sorted(progress)
    with np.load(out) as f:
        for k in STATS:
            for a in ("mean", "stderr"):
                assert np.array_equal(f[f"{k}_{a}"], getattr(ref[k], a), equal_nan=True), (k, a)


def test_sigterm_in_cli_saves_checkpoint_and_exits_143(tmp_path):
    # was: SIGTERM in the first 10 s (before the first periodic checkpoint) saved nothing
    ck = tmp_path / "ck.npz"
    p = _child("cli", ck, tmp_path / "unused")
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # a few shards in, far from the 3.6 s end and the 10 s checkpoint
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    lines = [l for l in err.splitlines() if l.strip() and not l.lstrip("\r ").startswith("shards")]
    assert len(lines) == 1 and "Traceback" not in err, err
    done = _done(ck)
    assert 0 < done < SHARDS
    assert f"interrupted by SIGTERM; checkpoint {str(ck)!r} holds {done} of {SHARDS}" in lines[0]
