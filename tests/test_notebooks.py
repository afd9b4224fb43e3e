"""Notebooks are documentation that must keep working: execute every code cell in order, in one namespace."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    nb = json.loads(path.read_text())
    ns: dict = {"__name__": "__notebook__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            code = "".join(cell["source"])
            exec(compile(code, f"{path.name}[cell {i}]", "exec"), ns)  # noqa: S102
    assert os.getcwd() == str(ROOT)
