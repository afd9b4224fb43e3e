"""Notebooks are documentation that must keep working: execute every code cell in order, in one namespace, and
check that what they show is what they claim."""
from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def run_notebook(path) -> tuple[dict, str]:
    nb = json.loads(path.read_text())
    ns: dict = {"__name__": "__notebook__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), ns)  # noqa: S102
    return ns, out.getvalue()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ns, printed = run_notebook(path)
    assert os.getcwd() == str(ROOT)
    if path.name == "01_walkthrough.ipynb":
        assert "groups never straddle: True" in printed
        assert tuple(ns["out"]["mask"].shape) == (4, 1, 64, 64) and tuple(ns["out"]["fibrosis"].shape) == (4, 2)
        assert ns["p"].prob.shape == (120, 160) and abs(float(ns["p"].heads["fibrosis"].sum()) - 1) < 1e-5
        assert "show fibrosis to a clinician? False" in printed        # synthetic labels are never shown
        assert "'abstain':" in printed and 0.0 <= ns["r"]["mean_dice"] <= 1.0
        assert set(ns["terms"]) >= {"wbce", "wiou", "corn_fibrosis", "corn_lift", "total"}
