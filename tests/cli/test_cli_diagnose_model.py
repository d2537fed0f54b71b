"""`pdlt diagnose --model module:factory`: end to end."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("torch")


MODELS = '''
import torch
import torch.nn as nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 1))

def with_dropout():
    return nn.Sequential(nn.Linear(5, 32), nn.Dropout(0.1), nn.Tanh(), nn.Linear(32, 1))

def gaussian(model):
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=(1.0 / m.in_features) ** 0.5)
            nn.init.zeros_(m.bias)
'''


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "pdlt_user_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "pdlt_user_models"
    sys.modules.pop("pdlt_user_models", None)


def test_diagnose_model_json_and_figure(models, tmp_path, run_cli):
    x = np.random.default_rng(0).standard_normal((10, 5))
    np.save(tmp_path / "x.npy", x)
    fig = tmp_path / "d.png"
    code, out, err = run_cli("diagnose", "--model", f"{models}:make", "--inputs",
                             str(tmp_path / "x.npy"), "--json", "--figure", str(fig))
    assert code == 0 and err == ""
    d = json.loads(out)
    assert d["activation"] == "tanh" and d["depth"] == 3
    assert d["G0"] == pytest.approx(float(np.mean(np.sum(x * x, 1)) / 5), rel=1e-14)
    assert [r["n_out"] for r in d["layers"]] == [32, 32, 1]
    assert abs(d["layers"][1]["C_W"] - 1 / 3) < 4 * d["layers"][1]["C_W_stderr"]
    assert d["at_criticality"] == [False, False, False]
    assert d["verification"] is None
    assert fig.stat().st_size > 5000


def test_diagnose_model_verify_table(models, run_cli):
    code, out, err = run_cli("diagnose", "--model", f"{models}:make", "--verify",
                             "--networks", "100", "--init", f"{models}:gaussian")
    assert code == 0 and err == ""
    assert "verification on 100 copies re-initialized by gaussian" in out
    assert "chi_perp" in out and "what the theory says" in out


@pytest.mark.parametrize("argv,match", [
    (["--model", "{m}:with_dropout"], r"module '1' \(Dropout\) is dropout"),
    (["--model", "{m}:nope"], "has no attribute 'nope'"),
    (["--model", "no_such_module_xyz:make"], "cannot import module"),
    (["--model", "{m}"], "must be MODULE:NAME"),
    (["--model", "{m}:make", "--depth", "3"], "drop --depth"),
    (["--model", "{m}:make", "--verify", "--networks", "1"], "--networks must be >= 2"),
    ([], "--depth and --width are required"),
])
def test_diagnose_model_errors(models, run_cli, argv, match):
    argv = [a.format(m=models) for a in argv]
    code, out, err = run_cli("diagnose", *argv)
    assert code == 2 and out == ""
    assert match.replace("\\", "") in err or __import__("re").search(match, err), err
