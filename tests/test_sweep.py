"""Hyper-parameter search through Hydra's sweeper: a real 2-trial Optuna sweep
(configs/hparams_search/optuna_heads.yaml) of heads on a frozen tiny segmenter, on the smoke experiment's frames."""

from __future__ import annotations

import csv

import pytest
import yaml

from tests.conftest import ROOT, run_script

SEARCH = ROOT / "configs" / "hparams_search" / "optuna_heads.yaml"


def _trial_score(trial_dir) -> float:
    """What train.py returns with the segmenter frozen: -(mean validation NLL of the heads) at the best epoch."""
    with (trial_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return max(
        -sum(float(r[k]) for k in r if k.startswith("val/nll_")) / sum(k.startswith("val/nll_") for k in r)
        for r in rows
    )


def test_optuna_sweep_of_heads_on_a_frozen_segmenter(tmp_path, tiny_checkpoint):
    sweep = tmp_path / "sweep"
    p = run_script(
        "train.py",
        "-m",
        "experiment=smoke",
        "hparams_search=optuna_heads",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.progress=false",
        "trainer.max_epochs=1",
        "trainer.n_boot=10",
        "trainer.freeze=segmentation",
        f"trainer.init_from={tiny_checkpoint}",
        "+model.decoder.decoder_channels=[16,16,16,8,8]",
    )
    assert p.returncode == 0, p.stderr[-3000:]

    trials = sorted((d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    assert [d.name for d in trials] == ["0", "1"]
    for d in trials:  # every trial is an ordinary run: what evaluate.py and TensorBoard read
        for f in ("best.safetensors", "best.json", "last.safetensors", "last.json"):
            assert (d / "checkpoints" / f).is_file(), f"trial {d.name}: checkpoints/{f} missing"
        assert list((d / "tb").glob("events.out.tfevents.*")), f"trial {d.name}: no TensorBoard log"
        assert (d / ".hydra" / "overrides.yaml").is_file()

    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    searched = yaml.safe_load(SEARCH.read_text())["hydra"]["sweeper"]["params"]
    assert result["name"] == "optuna" and set(result["best_params"]) == set(searched)
    scores = {d.name: _trial_score(d) for d in trials}
    # the sweeper maximised what train.py returned, and the best trial's own overrides are the best parameters
    assert result["best_value"] == pytest.approx(max(scores.values()), abs=1e-5)
    best = max(scores, key=scores.get)
    overrides = dict(o.split("=", 1) for o in yaml.safe_load((sweep / best / ".hydra" / "overrides.yaml").read_text()))
    for key, value in result["best_params"].items():
        assert float(overrides[key]) == pytest.approx(float(value)), key
