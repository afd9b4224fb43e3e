"""Notebooks are documentation that must keep working. Each is executed in a fresh kernel from the repository root
(notebooks/run.py, as `python -m notebooks.run` does) and what it shows is checked against what it claims; the
committed copy must hold the outputs of its current code, without this machine's folders in them."""

from __future__ import annotations

import re

import nbformat
import pytest

from notebooks.run import execute, machine_paths, source_sha
from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RERUN = "re-execute it: python -m notebooks.run --write"


def shown(cell) -> str:
    """The text a code cell shows: printed output and the plain-text form of displayed values."""
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def kinds(cell) -> set[str]:
    """What a code cell shows, by kind (stdout, stderr, image/png, error, ...)."""
    return {o.get("name") or m for o in cell.outputs for m in (o.get("data") or {o.output_type: None})}


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in the output"
    return float(m.group(1))


def check_quickstart(cells: list[str], images: list[int]) -> None:
    infer, _, summary, frames, truth = cells[1:6]
    assert "23 frames" in infer and "lesion in 23 -> outputs/notebooks/01_quickstart" in infer
    assert all(
        f in infer
        for f in (
            "predictions.jsonl",
            "summary.json",
            "report.html",
            "clinicdb_seq6_overlay.mp4",
            "masks/  (23 files)",
            "probs/  (23 files)",
        )
    )
    assert images[2] == 1 and images[5] == 1  # the overlay frames; annotation vs prediction
    assert "frames 23, with a lesion 23" in summary
    assert re.search(r"head small_sessile: .* clinically validated True", summary)
    assert "fibrosis or lift head in this model: none" in summary  # no public labels: never estimated
    assert "23 records" in frames
    per_frame = [float(x) for x in re.search(r"per frame: (.*)", truth).group(1).split()]
    assert len(per_frame) == 23 and number(r"mean (\d\.\d+)", truth) >= 0.7
    assert min(per_frame[:11]) >= 0.8 and 11 <= per_frame.index(min(per_frame)) <= 20  # what the text says


def check_train_and_evaluate(cells: list[str], images: list[int]) -> None:
    train, _, card, evaluation, _, data, step, predict = cells[1:9]
    assert "train 24 / val 8" in train and "run dir outputs/notebooks/02_train_and_evaluate/train" in train
    assert re.search(r"epoch=2 .*val/dice=", train) and images[2] == 1
    for head in ("fibrosis", "lift"):
        assert re.search(rf"{head}: ordinal .* label source synthetic, validated on real labels False", card)
    assert 0.0 <= number(r"\| synthetic \| 16 \| (\d\.\d+) \|", evaluation) < 0.8  # "a weak model"
    assert "written to outputs/notebooks/02_train_and_evaluate/evaluate" in evaluation
    assert "Confusion matrix per frame" in evaluation and images[5] == 4  # histogram, curve, gallery, reliability
    # the library without Hydra (what the former walkthrough notebook showed)
    assert "groups never straddle: True" in data
    assert "{'mask': (4, 1, 64, 64), 'fibrosis': (4, 2), 'lift': (4, 2)}" in step  # ordinal: K-1 CORN logits
    assert all(f"'{t}':" in step for t in ("wbce", "wiou", "corn_fibrosis", "corn_lift", "total"))
    assert "probability map (120, 160)" in predict
    assert abs(number(r"fibrosis probabilities sum to (\d\.\d+)", predict) - 1) < 1e-3
    assert "show fibrosis to a clinician? False" in predict  # synthetic labels are never shown
    assert "'abstain':" in predict and 0.0 <= number(r"'mean_dice': (\d\.\d+)", predict) <= 1.0


def check_your_data(cells: list[str], images: list[int]) -> None:
    export, convert, audit, train, card = cells[1:6]
    assert "48 images, 48 lesion polygons" in export
    assert all(s in convert for s in ("images: 48", "groups: 12", "image,mask,group", "group,fibrosis,lift"))
    assert "records: 48" in audit and "groups: 12" in audit and "labels_by_fold" in audit
    assert "run dir outputs/notebooks/03_your_data/heads" in train and "epoch=3 " in train
    assert "frozen from endolift_polyp_unet_mnv2" in card
    assert card.count("Label source: **synthetic** - never shown by infer.py: labels are 'synthetic'") == 2
    for head in ("fibrosis", "lift"):
        assert f"show {head} to a clinician? False\n  refused: labels are 'synthetic', not declared real" in card
    assert card.count("refused: no evidence from a locked test split or pooled out-of-fold predictions") == 2


CHECKS = {
    "01_quickstart.ipynb": check_quickstart,
    "02_train_and_evaluate.ipynb": check_train_and_evaluate,
    "03_your_data.ipynb": check_your_data,
}


def check(name: str, code: list) -> None:
    """Run the notebook's checks on its code cells' outputs."""
    CHECKS[name]([shown(c) for c in code], [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in code])


def test_every_notebook_has_checks():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_is_current(path):
    """Outputs of the code as it stands, from one top-to-bottom run, small, naming no folder of this machine, and
    showing what the notebook claims (as read on GitHub, without running anything)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.metadata.get("endolift", {}).get("source_sha") == source_sha(nb), f"code changed since its run: {RERUN}"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"not one top-to-bottom run: {RERUN}"
    assert all(c.outputs for c in code[1:]), f"a code cell after the setup cell shows nothing: {RERUN}"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert not machine_paths(nb)
    assert path.stat().st_size < 1_000_000
    check(path.name, code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_shows_what_it_claims(path):
    fresh = [c for c in execute(path).cells if c.cell_type == "code"]
    committed = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert [kinds(c) for c in fresh] == [kinds(c) for c in committed], f"outputs differ in kind: {RERUN}"
    noise = [o.text for c in fresh for o in c.outputs if o.get("name") == "stderr"]
    assert not noise, f"a cell wrote to stderr (a warning?), which the committed notebook would show: {noise}"
    check(path.name, fresh)
