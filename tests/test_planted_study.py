"""The planted study (benchmarks/planted_study.py) from real Kvasir-SEG frames, end to end: cross-validation, the
pooled report, a final model, and the display gate. About 30 min on 2 CPU cores: run with `pytest -m slow`."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA, needs_shared_data, run_script


@pytest.mark.slow
@needs_shared_data()
def test_planted_study_recovers_fibrosis_keeps_lift_at_chance_and_the_gate_agrees(tmp_path):
    out = tmp_path / "study"
    p = run_script(
        "benchmarks/planted_study.py", "--out", str(out), "--kvasir", str(SHARED_DATA / "kvasir-seg"), timeout=5400
    )
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["study"]["frames"] >= 300
    fib, lift = s["image/fibrosis"], s["image/lift"]
    assert fib["ci95"]["auroc"][0] > 0.8  # the planted grade is recovered, per case
    assert lift["ci95"]["auroc"][0] <= 0.5 <= lift["ci95"]["auroc"][1]  # noise stays at chance ...
    assert lift["ci95"]["qwk"][0] <= 0.0 <= lift["ci95"]["qwk"][1]
    # ... the covariates-only model is a proper regression: as good as radiotherapy alone on the same folds
    assert abs(s["covariates-lr/fibrosis"]["auroc"] - s["rt_only_lr_case_auroc"]) <= 0.05
    # the gate: fibrosis signed off and shown; lift refused by the evidence rule although declared real
    assert s["approve/fibrosis"]["exit"] == 0 and s["gate"]["fibrosis"] == []
    assert s["approve/lift"]["exit"] == 2 and s["gate"]["lift"]
    assert any("does not exclude" in r for r in s["approve/lift"]["refused"])
    for splits in (out / "cv").rglob("splits.json"):  # no patient in two parts of any fold
        parts = json.loads(splits.read_text())["parts"]
        units = [set(parts[k]["units"]) for k in ("train", "val", "heldout")]
        assert not units[0] & units[1] and not units[0] & units[2] and not units[1] & units[2]
