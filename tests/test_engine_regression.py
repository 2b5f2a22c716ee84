"""The rebuilt attack engine gives the per-pair results the earlier engine gave.

``tests/data/engine_regression.json`` holds the records of ten seeded sweeps
(see ``tests/_regression_cases.py``: sign / Adam / gradient descent steps,
text and image targets, L2 with random starts, the cosine loss without
quantisation, the fixed Jacobian, escalation, bisection, the steps rule),
written by the engine before its rebuild.  Each pair must keep its steps,
success, stop reason, budget, rounds and prediction, and its PSNR to 1e-4 dB.
"""

import json

import pytest
import torch

from _regression_cases import CASES, FIXTURE, pick, setup_model_and_data

EXPECTED = json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def model_and_data(one_thread):
    return setup_model_and_data()


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_records_as_before_the_rebuild(model_and_data, tmp_path, name):
    from pyvlmx.systematic import load_records, run_sweep

    model, data = model_and_data
    sweep, attack = CASES[name]
    run_sweep(model, data, tmp_path / name, progress=False, **sweep, **attack)
    got = pick(load_records(tmp_path / name))
    want = EXPECTED[name]
    assert [r["pair_id"] for r in got] == [r["pair_id"] for r in want]
    for g, w in zip(got, want):
        for key in ("success", "steps", "reason", "pred_after", "total_steps", "rounds"):
            assert g[key] == w[key], (name, g["pair_id"], key, g[key], w[key])
        assert g["eps"] == pytest.approx(w["eps"], abs=1e-9), (name, g["pair_id"])
        if w["psnr"] is None:
            assert g["psnr"] is None
        else:
            assert abs(g["psnr"] - w["psnr"]) <= 1e-4, (name, g["pair_id"], g["psnr"], w["psnr"])
    assert torch.get_num_threads() == 1
