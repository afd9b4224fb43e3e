"""Attribute heads: ordinal (CORN) outputs and loss, pooling regions, covariates, freezing, calibration, case
aggregation, grading metrics against torchmetrics, case-resampled bootstrap, folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import UserError
from data.datasets import Record
from data.splits import cv_split, group_kfold
from metrics.grading import bootstrap, scores
from models.build import build_model
from models.calibration import fit_temperature
from models.heads import (
    AttributeHead,
    aggregate_case,
    corn_loss,
    expected_grade,
    head_probabilities,
    parse_heads,
    set_covariate_stats,
)
from models.losses import EndoLoss


def test_head_config_forms_and_defaults():
    specs = parse_heads(
        {
            "fibrosis": ["F0", "F1", "F2"],
            "small_sessile": ["other", "small_sessile"],
            "lift": {"classes": ["a", "p", "n"], "kind": "nominal", "class_weights": [1, 2, 3]},
        }
    )
    assert specs["fibrosis"].kind == "ordinal" and specs["fibrosis"].n_outputs == 2
    assert specs["small_sessile"].kind == "nominal" and specs["small_sessile"].n_outputs == 2
    assert specs["lift"].kind == "nominal" and specs["lift"].class_weights == (1.0, 2.0, 3.0)
    for bad in (
        {"x": ["only"]},
        {"x": {"classes": ["a", "b"], "kind": "circular"}},
        {"x": {"classes": ["a", "b"], "class_weights": [1]}},
        {"x": {"classes": ["a", "b"], "typo": 1}},
    ):
        with pytest.raises(UserError, match="model.heads.x"):
            parse_heads(bad)


def test_corn_probabilities_are_a_rank_consistent_distribution():
    torch.manual_seed(0)
    logits = torch.randn(50, 3) * 3
    p = head_probabilities(logits, "ordinal")
    assert p.shape == (50, 4) and torch.all(p >= 0) and torch.allclose(p.sum(1), torch.ones(50), atol=1e-6)
    # P(y > k) = prod_{j<=k} sigmoid(logit_j): check class 0 and the top class by hand
    s = torch.sigmoid(logits)
    assert torch.allclose(p[:, 0], 1 - s[:, 0], atol=1e-6) and torch.allclose(p[:, 3], s.prod(1), atol=1e-6)
    # a huge temperature sends every conditional probability to 1/2
    hot = head_probabilities(logits, "ordinal", temperature=1e6)
    assert torch.allclose(hot, torch.tensor([0.5, 0.25, 0.125, 0.125]).expand(50, 4), atol=1e-4)
    g = expected_grade(head_probabilities(torch.tensor([[-4.0, -4.0], [4.0, -4.0], [4.0, 4.0]]), "ordinal").numpy())
    assert g[0] < 0.1 and 0.9 < g[1] < 1.1 and g[2] > 1.9


def test_corn_loss_by_hand_and_it_rewards_the_right_grade():
    logits = torch.tensor([[2.0, -1.0]])
    # label 1: task 0 (y >= 0 included, target 1), task 1 (y >= 1 included, target 0)
    expect = (torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.nn.functional.softplus(torch.tensor(-1.0))) / 2
    assert corn_loss(logits, torch.tensor([1])).item() == pytest.approx(expect.item(), abs=1e-6)
    # label 0: only task 0 is in the conditional set
    assert corn_loss(logits, torch.tensor([0])).item() == pytest.approx(
        torch.nn.functional.softplus(torch.tensor(2.0)).item(), abs=1e-6
    )
    good, bad = torch.tensor([[5.0, 5.0]]), torch.tensor([[-5.0, -5.0]])
    assert corn_loss(good, torch.tensor([2])) < corn_loss(bad, torch.tensor([2]))


def test_ring_pooling_sits_around_the_lesion():
    head = AttributeHead([8], 2, ring_fraction=0.1)
    mask = torch.full((1, 1, 64, 64), -10.0)
    mask[:, :, 24:40, 24:40] = 10.0
    lesion, ring = head.region_weights(mask)
    assert lesion.shape[-1] == 16 and float(lesion[0, 0, 8, 8]) > 0.99  # lesion centre
    assert float(ring[0, 0, 8, 8]) < 0.01 and float(ring[0, 0, 5, 8]) > 0.99  # ring just outside, not inside
    assert float(ring[0, 0, 0, 0]) < 0.01  # far away: neither


def test_covariates_missing_values_and_modes():
    model = build_model(
        weights=None,
        heads={"fibrosis": ["F0", "F1", "F2"]},
        head_inputs="fused",
        covariates=["rt", "weeks"],
        decoder={"decoder_channels": [16, 16, 16, 8, 8]},
    ).eval()
    set_covariate_stats(model, np.array([[1.0, 10.0], [0.0, np.nan], [1.0, 14.0]]))
    head = model.heads["fibrosis"]
    assert head.cov_mean.tolist() == pytest.approx([2 / 3, 12.0]) and head.cov_std[1].item() == pytest.approx(2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model(x, torch.tensor([[1.0, 12.0], [float("nan"), float("nan")]]))["fibrosis"]
        b = model(x, None)["fibrosis"]
        c = model(x, torch.tensor([[0.0, 12.0], [float("nan"), float("nan")]]))["fibrosis"]
    assert torch.isfinite(a).all() and torch.allclose(a[1], b[1])  # all-missing == no covariates given
    assert not torch.allclose(a[0], c[0])  # the covariate changes the output
    with pytest.raises(UserError, match="needs model.covariates"):
        build_model(weights=None, heads={"fibrosis": ["F0", "F1", "F2"]}, head_inputs="covariates")


def test_frozen_segmenter_does_not_change_while_heads_train():
    torch.manual_seed(0)
    model = build_model(
        weights=None, heads={"fibrosis": ["F0", "F1", "F2"]}, decoder={"decoder_channels": [16, 16, 16, 8, 8]}
    ).freeze_segmentation()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not model.seg.training and model.heads.training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = EndoLoss(heads={"fibrosis": ["F0", "F1", "F2"]}, segmentation=False)
    x = torch.randn(4, 3, 64, 64)
    batch = {
        "mask": torch.zeros(4, 1, 64, 64),
        "has_mask": torch.ones(4, dtype=torch.bool),
        "labels": {"fibrosis": torch.tensor([0, 1, 2, 1])},
    }
    for _ in range(2):
        terms = loss_fn(model(x), batch)
        assert set(terms) == {"corn_fibrosis", "total"}
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("seg."))  # incl. BN statistics
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("heads."))


def test_heads_train_only_at_the_frozen_segmenters_own_input_size(tiny_checkpoint):
    from models.checkpoint import load_checkpoint
    from training.prepare import prepare_for_training

    src, card = load_checkpoint(tiny_checkpoint)  # trained (here: saved) at 64x64, stretch
    model = build_model(**{**card.model, "weights": None})
    frozen = dict(init_from=str(tiny_checkpoint), freeze="segmentation")
    with pytest.raises(UserError, match=r"trained at 64x64 \(stretch\) but data.size=96.*set data.size=64"):
        prepare_for_training(model, **frozen, input_size=96, resize="stretch")
    with pytest.raises(UserError, match="set data.size=64 data.resize=stretch"):
        prepare_for_training(model, **frozen, input_size=64, resize="letterbox")
    # fine-tuning (nothing frozen) may move to another input size
    prepare_for_training(build_model(**{**card.model, "weights": None}), init_from=str(tiny_checkpoint), input_size=96)
    prepare_for_training(model, **frozen, input_size=64, resize="stretch")
    seg = {k: v for k, v in src.state_dict().items() if k.startswith("seg.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in seg.items())


def test_uninformative_frames_are_down_weighted():
    loss_fn = EndoLoss(heads={"h": {"classes": ["a", "b"]}}, min_lesion_fraction=0.05, uninformative_weight=0.0)
    out = {"mask": torch.full((3, 1, 8, 8), -5.0), "h": torch.tensor([[5.0, -5.0], [5.0, -5.0], [-5.0, 5.0]])}
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, :, :4, :4] = 1  # frame 0: lesion visible (and labelled right); frame 1: no lesion (labelled wrong)
    batch = {
        "mask": mask,
        "has_mask": torch.tensor([True, True, False]),
        "labels": {"h": torch.tensor([0, 1, 1])},
        "poor_quality": torch.tensor([False, False, True]),
    }
    # frames 1 (no lesion) and 2 (poor quality) are skipped: only the confident right frame 0 counts
    assert loss_fn(out, batch)["ce_h"].item() < 1e-3
    keep_all = EndoLoss(heads={"h": {"classes": ["a", "b"]}})
    assert keep_all(out, batch)["ce_h"].item() > 1.0


def test_one_informative_rule_from_training_to_the_report():
    """The head losses, predict_records and the review count a frame by the same function, at the threshold the
    checkpoint's card records from training (the heads' own run's when they were added to a shipped segmenter)."""
    from data.quality import MIN_LESION_FRACTION, is_informative
    from models.card import ModelCard
    from tests.conftest import tiny_card

    fractions, poor = [0.0, 0.01, 0.2, 0.2], [False, False, False, True]
    one_by_one = [is_informative(f, p, min_lesion_fraction=0.05) for f, p in zip(fractions, poor)]
    batch = is_informative(torch.tensor(fractions), torch.tensor(poor), min_lesion_fraction=0.05)
    assert one_by_one == [False, False, True, False] == batch.tolist()
    assert is_informative(0.1, {"blurry": True, "overexposed": False}) is False
    card = tiny_card({"lift": ["a", "b"]})
    assert ModelCard.from_dict(card).min_lesion_fraction == MIN_LESION_FRACTION  # training recorded none
    card["training"] = {"config": {"data": {"min_lesion_fraction": 0.005}}}
    assert ModelCard.from_dict(card).min_lesion_fraction == 0.005
    card["heads"]["lift"]["training"] = {"config": {"data": {"min_lesion_fraction": 0.01}}}
    assert ModelCard.from_dict(card).min_lesion_fraction == 0.01


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (4000, 3))
    p = torch.softmax(torch.tensor(z / 2.5), dim=1).numpy()
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature(z, y, "nominal") == pytest.approx(2.5, rel=0.1)
    assert fit_temperature(z[:, :2], (y > 0).astype(int) + (y > 1), "ordinal") > 0  # runs on CORN logits
    assert bootstrap(p, y, [str(i) for i in range(len(y))], n_boot=0)["auroc"] is None  # no resamples: no interval


def test_case_aggregation_and_abstention():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.7, 0.3]])
    agg = aggregate_case(probs, np.array([True, True, False, True]), min_frames=3)
    assert not agg["abstain"] and agg["index"] == 0 and agg["frames"] == 3
    assert agg["confidence"] == pytest.approx(0.8)  # the uninformative frame is ignored
    assert aggregate_case(probs, np.array([True, True, False, False]), min_frames=3)["abstain"]
    low = aggregate_case(np.array([[0.55, 0.45]] * 5), np.ones(5, bool), min_confidence=0.6)
    assert low["abstain"] and "confidence" in low["reason"]
    none = aggregate_case(probs, np.zeros(4, bool))
    assert none["abstain"] and none["probs"] is None
    assert aggregate_case(np.zeros((0, 2)), np.zeros(0, bool))["abstain"]  # a video with no decodable frame


def test_grading_scores_match_torchmetrics():
    from torchmetrics.functional import classification as C

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (300, 3))
    y = rng.integers(0, 3, 300)
    logits[np.arange(300), y] += 1.5
    p = torch.softmax(torch.tensor(logits), 1).numpy()
    s = scores(p, y)
    pt, yt = torch.tensor(p, dtype=torch.float32), torch.tensor(y)
    assert s["accuracy"] == pytest.approx(float(C.multiclass_accuracy(pt, yt, 3, average="micro")), abs=1e-6)
    assert s["macro_f1"] == pytest.approx(float(C.multiclass_f1_score(pt, yt, 3, average="macro")), abs=1e-6)
    assert s["balanced_accuracy"] == pytest.approx(float(C.multiclass_recall(pt, yt, 3, average="macro")), abs=1e-6)
    assert s["qwk"] == pytest.approx(float(C.multiclass_cohen_kappa(pt, yt, 3, weights="quadratic")), abs=1e-5)
    assert s["auroc"] == pytest.approx(float(C.multiclass_auroc(pt, yt, 3, average="macro")), abs=1e-4)
    assert s["ece"] == pytest.approx(float(C.multiclass_calibration_error(pt, yt, 3, n_bins=15)), abs=1e-4)
    b = scores(p[:, :2] / p[:, :2].sum(1, keepdims=True), (y == 1).astype(int))
    assert b["auroc"] == pytest.approx(
        float(C.binary_auroc(torch.tensor(p[:, 1] / p[:, :2].sum(1)), torch.tensor((y == 1).astype(int)))), abs=1e-4
    )


def test_bootstrap_resamples_whole_cases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    case_effect = np.repeat(rng.normal(0, 0.25, 20), 10)  # frames of one case err together
    p1 = np.clip(0.5 + 0.15 * (2 * y - 1) + case_effect + rng.normal(0, 0.05, 200), 0.01, 0.99)
    p = np.stack([1 - p1, p1], 1)
    ci = bootstrap(p, y, [f"c{i // 10}" for i in range(200)], n_boot=200)
    point = scores(p, y)["auroc"]
    assert ci["auroc"][0] <= point <= ci["auroc"][1]
    # a case-level resample with 20 cases is wider than treating the 200 frames as independent
    narrow = bootstrap(p, y, [str(i) for i in range(200)], n_boot=200)
    assert (ci["accuracy"][1] - ci["accuracy"][0]) > (narrow["accuracy"][1] - narrow["accuracy"][0])


def _records(n_groups: int, per: int, labels=None):
    return [
        Record(image=None, mask=None, id=f"{g}-{i}", group=f"g{g}", labels={"h": (labels[g] if labels else -1)})
        for g in range(n_groups)
        for i in range(per)
    ]


def test_group_kfold_keeps_patients_whole_and_balances_labels():
    labels = [g % 3 for g in range(30)]
    recs = _records(30, 4, labels)
    folds = group_kfold(recs, k=5, seed=0, stratify_of=lambda r: r.labels["h"])
    by_group = {}
    for r, f in zip(recs, folds):
        by_group.setdefault(r.group, set()).add(f)
    assert all(len(v) == 1 for v in by_group.values())
    for f in range(5):
        counts = np.bincount([r.labels["h"] for r, x in zip(recs, folds) if x == f], minlength=3)
        assert counts.min() >= 4 and counts.max() <= 12  # 2 of each label's 10 patients (8 frames), +-1 patient
    assert folds == group_kfold(recs, k=5, seed=0, stratify_of=lambda r: r.labels["h"])
    rest, held = cv_split(recs, folds=5, fold=2, stratify_head="h")
    assert not {r.group for r in rest} & {r.group for r in held} and len(rest) + len(held) == len(recs)
    with pytest.raises(UserError, match="folds"):
        group_kfold(_records(3, 2), k=5)


def test_temperature_is_fitted_per_case_on_informative_frames_bounded_and_flagged():
    from models.calibration import T_BOUNDS, case_nll, temperature_flag

    rng = np.random.default_rng(1)
    # 300 cases of 4 frames: each frame's logit is the case's true evidence plus independent frame noise. Averaging
    # 4 frames' probabilities is better calibrated than any one frame, so the case-level T differs from the frame one
    case_logit = rng.normal(0, 2.0, 300)
    y_case = (rng.random(300) < 1 / (1 + np.exp(-case_logit))).astype(int)
    z = np.repeat(case_logit, 4) + rng.normal(0, 2.5, 1200)
    logits = np.stack([np.zeros_like(z), z], axis=1)
    y, cases = np.repeat(y_case, 4), np.repeat(np.arange(300), 4)
    t_frame = fit_temperature(logits, y, "nominal", prior_sd=None)
    t_case = fit_temperature(logits, y, "nominal", cases=cases, prior_sd=None)
    assert abs(t_case - t_frame) > 0.2  # the level matters
    assert case_nll(logits, y, cases, "nominal", t_case) <= case_nll(logits, y, cases, "nominal", t_frame)
    # bounded, and a prior keeps a 2-case fit near 1 instead of wherever the noise points
    assert T_BOUNDS[0] <= fit_temperature(logits * 100, y, "nominal") <= T_BOUNDS[1]
    few = fit_temperature(logits[:8], y[:8], "nominal", cases=cases[:8])
    assert abs(np.log(few)) < abs(np.log(fit_temperature(logits[:8], y[:8], "nominal", cases=cases[:8], prior_sd=None)))
    assert temperature_flag(3.5) and temperature_flag(0.3) and temperature_flag(1.2) is None


def test_best_epoch_can_be_chosen_by_one_head():
    from training.validation import selection_score

    stats = {"val/nll_fibrosis": 0.9, "val/nll_lift": 0.2, "train/total": 1.0}
    assert selection_score(stats, heads_only=True) == pytest.approx(-0.55)
    assert selection_score(stats, heads_only=True, select_on="fibrosis") == pytest.approx(-0.9)
    assert selection_score(stats, heads_only=True, select_on="all") == pytest.approx(-0.55)


def test_calibration_ignores_uninformative_frames(tiny_checkpoint, tmp_path, monkeypatch):
    """Frames without a visible lesion (or blurred) never reach a case estimate, so they must not set T: here they
    are confidently wrong, and T is the one fitted on the informative frames alone."""
    import shutil

    import models.predictor as predictor
    from models.checkpoint import read_card
    from training.finish import calibrate_checkpoint

    stem = tmp_path / "m"
    for ext in (".safetensors", ".json"):
        shutil.copy(tiny_checkpoint.with_name(tiny_checkpoint.name + ext), stem.with_name("m" + ext))
    rng = np.random.default_rng(0)
    rows = []
    for c in range(60):
        y = int(rng.integers(3))
        for f in range(4):
            informative = f < 3
            # the tiny card's heads are nominal (3 logits): informative frames lean right, the others confidently wrong
            z = rng.normal(0, 1, 3) + (2.0 * np.eye(3)[y] if informative else 6.0 * np.eye(3)[(y + 1) % 3])
            rows.append({"id": f"{c}_{f}", "group": f"c{c}", "labels": {"fibrosis": y, "lift": -1},
                         "logits": {"fibrosis": z.tolist(), "lift": [0.0, 0.0, 0.0]}, "probs": {},
                         "area_fraction": 0.1 if informative else 0.0, "informative": informative})  # fmt: skip

    class Fake:
        heads = ["fibrosis", "lift"]
        temperatures: dict = {}

    monkeypatch.setattr(predictor.Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: Fake()))
    monkeypatch.setattr(predictor, "predict_records", lambda *a, **k: [dict(r, probs={}) for r in rows])
    calibrate_checkpoint(stem, [], n_boot=0)
    fib = read_card(stem).heads["fibrosis"]
    informative = [r for r in rows if r["informative"]]
    expected = fit_temperature(
        np.array([r["logits"]["fibrosis"] for r in informative]),
        np.array([r["labels"]["fibrosis"] for r in informative]),
        "nominal",
        cases=np.array([r["group"] for r in informative]),
    )
    assert fib.temperature == pytest.approx(expected, abs=1e-3)
    assert fib.training["temperature_fit"]["level"] == "case" and fib.training["temperature_fit"]["frames"] == 180
