"""``pdlt measure`` end to end: exit code, stdout, empty stderr."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")


def test_json_shaped_like_flow(run_cli):
    code, out, err = run_cli("measure", "--activation", "relu", "--depth", "3", "--width", "8",
                             "--C-W", "2", "--networks", "200", "--stats", "K,V,Theta,G1", "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert [row["layer"] for row in d["layers"]] == [1, 2, 3]
    row = d["layers"][1]
    for k in ("K", "V", "V_pair", "V_same", "Theta", "G1"):
        assert set(row[k]) == {"mean", "stderr"}, k
    assert d["n_networks"] == 200 and d["seed"] == 0
    # ReLU at criticality: K = 1 exactly at any width
    assert abs(row["K"]["mean"] - 1.0) < 4 * row["K"]["stderr"]


def test_table_and_inputs_file(run_cli, tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 3))
    path = tmp_path / "x.npy"
    np.save(path, x)
    code, out, err = run_cli("measure", "--activation", "tanh", "--depth", "2", "--width", "6",
                             "--networks", "50", "--inputs", str(path), "--stats", "K,B", "--n-out", "2")
    assert code == 0 and err == ""
    assert "layer" in out and "array(2, 2)" in out and "--json" in out


def test_bad_arguments(run_cli):
    code, _, err = run_cli("measure", "--depth", "2", "--networks", "10", "--stats", "K,Z")
    assert code == 2 and "unknown statistic 'Z'" in err
    code, _, err = run_cli("measure", "--depth", "2", "--networks", "1")
    assert code == 2 and "--networks" in err
