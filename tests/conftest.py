"""Shared fixtures: tiny models and synthetic data on CPU; real data only when ../shared/data is present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"

torch.set_num_threads(1)


def needs_shared_data():
    return pytest.mark.skipif(
        not (SHARED_DATA / "kvasir-seg").is_dir(),
        reason=f"public datasets not found at {SHARED_DATA} (see ../shared/data/README.md)",
    )


def run_script(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an entry script as a user would, in a subprocess; returns the completed process."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session", autouse=True)
def repo_stays_clean():
    """Tests write into temporary folders only: no test may leave data in the repository's own cache."""
    existed = (ROOT / ".cache").exists()
    yield
    assert existed or not (ROOT / ".cache").exists(), (
        "a test wrote into the repository's .cache/ (pass paths.cache_dir)"
    )


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory) -> Path:
    from data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synth"), n=16, size=(64, 96), seed=3, n_groups=4)


def tiny_card(heads: dict | None = None, label_source: str = "synthetic", validated: bool = False) -> dict:
    heads = heads or {}
    return {
        "name": "tiny-test",
        "model": {
            "arch": "unet",
            "encoder": "mobilenet_v2",
            "weights": None,
            "heads": heads,
            "decoder": {"decoder_channels": [16, 16, 16, 8, 8]},
        },
        "heads": {
            h: {"classes": list(c), "trained": True, "label_source": label_source, "validated_on_real": validated}
            for h, c in heads.items()
        },
        "input": {"size": 64, "resize": "stretch", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }


def passing_results(classes: list[str], kind: str = "ordinal", n_per_class: int = 25, low: float = 0.3) -> dict:
    """A hand-made metrics.heads.score_head result whose case-level evidence passes the display gate's defaults
    (``low``: the lower bound of the discrimination interval)."""
    k = len(classes)
    confusion = [[n_per_class if i == j else 0 for j in range(k)] for i in range(k)]
    case = {
        "n_cases": n_per_class * k,
        "n_scored": n_per_class * k,
        "abstained": 0,
        "auroc": 0.9,
        "qwk": 0.7,
        "ece": 0.05,
        "confusion": confusion,
        "ci95": {"auroc": [max(low, 0.51), 0.95], "qwk": [low, 0.85]},
        "calibration": {"slope": 1.0, "intercept": 0.0, "n": n_per_class * k},
        "degenerate": None,
    }
    return {"classes": classes, "kind": kind, "interval_unit": "patient", "frame": {}, "case": case}


def approved_head(classes: list[str], kind: str = "ordinal", **results_kw) -> dict:
    """A card head entry that the display gate passes: real labels declared by a named person, evidence from
    cross-validation, signed off for exactly that evidence. Gate tests start from it and break one thing."""
    from models.gate import GateRule, digest, evidence_from_results

    ev = evidence_from_results(
        passing_results(classes, kind, **results_kw), source="cv", where="cv_results.json", rule=GateRule()
    )
    return {
        "classes": list(classes),
        "kind": kind,
        "trained": True,
        "label_source": "real",
        "validated_on_real": True,
        "label_declaration": {"by": "Dr Test", "date": "2026-12-04T00:00:00+00:00", "command": "python train.py"},
        "evidence": ev,
        "signoff": {"by": "Dr Test", "date": "2026-12-04T00:00:00+00:00", "evidence_sha256": digest(ev)},
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny checkpoint with both heads (labelled synthetic, so never shown clinically)."""
    from models.build import build_model
    from models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    card = tiny_card({"fibrosis": ["F0", "F1", "F2"], "lift": ["adequate", "partial", "non-lifting"]})
    model = build_model(**card["model"])
    stem = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(stem, model, card)
    return stem


@pytest.fixture()
def synthetic_video(tmp_path) -> Path:
    from data.synthetic import synthetic_frame
    from data.video import VideoWriter

    rng = np.random.default_rng(0)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10, width=96, height=64) as w:
        for _ in range(12):
            w.write(synthetic_frame(rng, (64, 96))["image"])
    return path


def html_tags(html: str) -> list[tuple[str, dict]]:
    """Every start tag of a page with its attributes, as a browser's parser sees them (for escaping checks)."""
    from html.parser import HTMLParser

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: list[tuple[str, dict]] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    page = Tags()
    page.feed(html)
    return page.tags
