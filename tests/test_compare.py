"""python -m metrics.compare: paired per-image differences between two evaluate.py runs, resampled by group."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from metrics.compare import compare_set, groups_of, load_sequences, main


def write_run(root, sets, finished=True):
    if finished:  # evaluate.py writes metrics.json last, listing the sets it scored
        old = json.loads((root / "metrics.json").read_text())["results"] if (root / "metrics.json").is_file() else {}
        root.mkdir(parents=True, exist_ok=True)
        (root / "metrics.json").write_text(json.dumps({"results": old | dict.fromkeys(sets, {})}))
    for name, rows in sets.items():
        (root / name).mkdir(parents=True)
        with (root / name / "per_image.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "dice", "iou"])
            w.writerows([n, d, d / (2 - d)] for n, d in rows)


def test_clinicdb_frames_resample_by_sequence_other_images_alone():
    seq = load_sequences()
    assert seq["1"] == "1" and seq["612"] == "29"  # the shipped table: 612 frames, 29 sequences
    assert groups_of(["clinicdb/1", "clinicdb/2", "clinicdb/612", "kvasir/abc"], seq) == [
        "clinicdb-seq1",
        "clinicdb-seq1",
        "clinicdb-seq29",
        "kvasir/abc",
    ]


def test_paired_difference_and_its_interval():
    rng = np.random.default_rng(0)
    a = {f"kvasir/{i}": float(rng.uniform(0.5, 1.0)) for i in range(60)}
    shifted = compare_set(a, {k: v + 0.02 for k, v in a.items()}, n_boot=200)
    assert shifted["diff"] == pytest.approx(0.02) and shifted["ci95"] == pytest.approx([0.02, 0.02])
    assert (shifted["b_higher"], shifted["a_higher"], shifted["n_groups"]) == (60, 0, 60)
    # half the images gain 0.1, half lose 0.1: mean 0, and the interval straddles 0
    b = {k: v + (0.1 if i % 2 else -0.1) for i, (k, v) in enumerate(sorted(a.items()))}
    mixed = compare_set(a, b, n_boot=500)
    assert mixed["diff"] == pytest.approx(0.0, abs=1e-9) and mixed["ci95"][0] < 0 < mixed["ci95"][1]
    # the same differences, but each sign confined to one group: two units, a far wider interval
    groups = ["g1" if i % 2 else "g2" for i in range(60)]
    grouped = compare_set(a, b, groups, n_boot=500)
    width = {name: r["ci95"][1] - r["ci95"][0] for name, r in (("mixed", mixed), ("grouped", grouped))}
    assert grouped["n_groups"] == 2 and width["grouped"] > 3 * width["mixed"]


def test_cli_table_and_refusals(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    clinic_a = [("clinicdb/1", 0.9), ("clinicdb/2", 0.8), ("clinicdb/612", 0.7), ("clinicdb/9999", 0.5)]
    write_run(a, {"kvasir": [("kvasir/x", 0.8), ("kvasir/y", 0.6), ("kvasir/n", float("nan"))], "clinicdb": clinic_a})
    write_run(b, {"kvasir": [("kvasir/y", 0.7), ("kvasir/n", 0.5), ("kvasir/x", 0.9)], "only_b": [("z", 1.0)]})
    write_run(b, {"clinicdb": [(n, d + 0.1) for n, d in clinic_a]})
    assert main([str(a), str(b), "--n-boot", "50", "--out", str(tmp_path / "cmp.md")]) == 0
    table = (tmp_path / "cmp.md").read_text()
    # paired by name; the image whose metric is undefined (NaN) is left out of both sides
    assert "| kvasir | 2 (2) | 0.700 | 0.800 | +0.100 [+0.100, +0.100] | 2 / 0 |" in table
    # ClinicDB frames grouped by sequence (1 and 2: sequence 1; 612: 29); an unknown frame alone, with a warning
    assert "| clinicdb | 4 (3) | 0.725 | 0.825 |" in table and "only_b" not in table
    assert "clinicdb: 1 CVC-ClinicDB frames have no sequence" in capsys.readouterr().err

    # a set left in the folder by an earlier or failed run (not in metrics.json) is not compared
    write_run(a, {"stale": [("s", 0.1)]}, finished=False)
    write_run(b, {"stale": [("s", 0.9)]})
    assert main([str(a), str(b), "--n-boot", "50"]) == 0 and "stale" not in capsys.readouterr().out
    write_run(d := tmp_path / "d", {"kvasir": [("kvasir/x", 0.8)]}, finished=False)
    assert main([str(a), str(d)]) == 2
    assert "has no metrics.json: not a finished evaluate.py run" in capsys.readouterr().err

    write_run(c := tmp_path / "c", {"kvasir": [("kvasir/x", 0.8), ("kvasir/w", 0.6)]})
    assert main([str(a), str(c)]) == 2
    assert "kvasir: the two runs scored different images" in capsys.readouterr().err
    assert main([str(a), str(b), "--metric", "hd95"]) == 2
    assert "has no 'hd95' column" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def benchmark(name: str):
    """A script under benchmarks/ (not a package) loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cross_centre_summaries_add_up_over_one_direction_calls(tmp_path):
    """benchmarks/cross_centre.py run one direction at a time keeps the other direction's summary when the recipe and
    settings are the same, and starts afresh when they differ."""
    import json

    cross_centre = benchmark("cross_centre")
    path = tmp_path / "summary@ms.json"
    now = {"recipe": "baseline", "overrides": [], "tag": "ms", "eval_overrides": ["tta=true"], "directions": {}}
    assert cross_centre.earlier_directions(path, now) == {}
    path.write_text(json.dumps(now | {"directions": {"clinicdb": {"dice@0.5": 0.84}}}))
    assert cross_centre.earlier_directions(path, now) == {"clinicdb": {"dice@0.5": 0.84}}
    other = now | {"eval_overrides": ["tta=true", "tta_views=hs"]}
    assert cross_centre.earlier_directions(path, other) == {}


def test_adapt_bn_recomputes_batchnorm_statistics_on_target_images_and_keeps_the_original(tmp_path, tiny_checkpoint):
    """benchmarks/adapt_bn.py (the AdaBN probe of the cross-centre protocol): the copy's BatchNorm statistics are the
    plain average over the target images, blend keeps a share of the old ones, nothing else changes, the original
    checkpoint is untouched, and the copy's card says what it was adapted on."""
    import cv2
    import torch

    from models.checkpoint import load_checkpoint

    adapt_bn = benchmark("adapt_bn")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def mask_logits(self, x):
            return self.bn(x)

    net = Net().eval()
    batches = [torch.full((2, 3, 4, 4), 1.0), torch.full((2, 3, 4, 4), 3.0)]
    assert adapt_bn.adapt_batchnorm(net, batches) == 1
    assert not net.training and net.bn.momentum == 0.1
    assert torch.allclose(net.bn.running_mean, torch.full((3,), 2.0))  # both batches alike, not the last one's
    net2 = Net().eval()  # starts at mean 0, variance 1
    adapt_bn.adapt_batchnorm(net2, [torch.full((2, 3, 4, 4), 4.0)], blend=0.25)
    assert torch.allclose(net2.bn.running_mean, torch.full((3,), 3.0))
    assert torch.allclose(net2.bn.running_var, torch.full((3,), 0.25))

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    before = {k: v.clone() for k, v in load_checkpoint(tiny_checkpoint)[0].state_dict().items()}
    out = tmp_path / "adapted" / "best"
    assert adapt_bn.main(["--checkpoint", str(tiny_checkpoint), "--images", str(images), "--out", str(out)]) == 0
    original, _ = load_checkpoint(tiny_checkpoint)
    adapted, card = load_checkpoint(out)
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert card.extra["batchnorm_adapted"]["count"] == 3
    with pytest.raises(SystemExit, match="original is kept"):
        adapt_bn.main(["--checkpoint", str(tiny_checkpoint), "--images", str(images), "--out", str(tiny_checkpoint)])
    with pytest.raises(SystemExit, match="not a folder"):
        adapt_bn.main(["--checkpoint", str(tiny_checkpoint), "--images", str(tmp_path / "nowhere"), "--out", str(out)])
    with pytest.raises(SystemExit, match="card not found"):
        adapt_bn.main(["--checkpoint", str(tmp_path / "nothing"), "--images", str(images), "--out", str(out)])
    with pytest.raises(SystemExit, match="no images"):
        adapt_bn.main(["--checkpoint", str(tiny_checkpoint), "--images", str(tmp_path / "adapted"), "--out", str(out)])
