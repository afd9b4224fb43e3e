"""The display gate (models/gate.py): what must be proven before a head's estimate reaches a clinician, the
sign-off command (models/approve.py) and the binding of signed-off card entries to the weights. Every card here is
made by hand (a card written by training is never gated in a test)."""

from __future__ import annotations

import copy
import json

import pytest

from core.errors import UserError
from models.build import build_model
from models.card import ModelCard
from models.checkpoint import bind_gate, read_card, save_checkpoint
from models.gate import digest, refusals, shown
from tests.conftest import approved_head, passing_results, tiny_card

FIB = ["F0", "F1", "F2"]


def card_with(head: dict) -> ModelCard:
    d = tiny_card({"fibrosis": FIB})
    d["heads"]["fibrosis"] = head
    return ModelCard.from_dict(d)


def resign(head: dict) -> dict:
    """Sign ``head`` off again for its (changed) evidence, as models.approve would."""
    head["signoff"]["evidence_sha256"] = digest(head["evidence"])
    return head


def test_a_fully_evidenced_signed_off_head_is_shown():
    card = card_with(approved_head(FIB))
    assert refusals(card, "fibrosis") == [] and shown(card, "fibrosis")
    assert not shown(card, "lift") and refusals(card, "lift") == ["not available: no validated model"]


@pytest.mark.parametrize(
    "breaks, reason",
    [
        (lambda h: h.update(label_source="synthetic"), "labels are 'synthetic'"),
        (lambda h: h.update(label_source="proxy"), "labels are 'proxy'"),
        (lambda h: h.update(label_declaration=None), "nobody is named"),
        (lambda h: h.update(trained=False), "not trained"),
        (lambda h: h.update(evidence=None), "no evidence"),
        (lambda h: resign(h) if h["evidence"].update(source="validation") is None else h, "chose something"),
        (lambda h: resign(h) if h["evidence"]["cases_per_class"].update(F2=19) is None else h, "F2 19"),
        (lambda h: resign(h) if h["evidence"].update(ci95=[-0.02, 0.6]) is None else h, "does not exclude 0"),
        (lambda h: resign(h) if h["evidence"].update(case_ece=0.2) is None else h, "ECE 0.200 > 0.15"),
        (lambda h: resign(h) if h["evidence"].update(interval_unit="frame") is None else h, "by frame"),
        (lambda h: resign(h) if h["evidence"].update(degenerate="constant output") is None else h, "degenerate"),
        (lambda h: h.update(signoff=None), "not signed off"),
        (lambda h: h["evidence"].update(value=0.99), "sign-off is for other evidence"),
    ],
)
def test_each_missing_proof_refuses_the_head_and_names_why(breaks, reason):
    head = approved_head(FIB)
    breaks(head)
    card = card_with(head)
    found = refusals(card, "fibrosis")
    assert not shown(card, "fibrosis") and any(reason in r for r in found), found


def test_binary_heads_need_an_auroc_interval_above_chance_and_a_sane_calibration_slope():
    head = approved_head(["other", "sessile"], kind="nominal")
    d = tiny_card({"x": ["other", "sessile"]})
    d["heads"]["x"] = head
    assert shown(ModelCard.from_dict(d), "x") and head["evidence"]["metric"] == "auroc"
    head["evidence"]["ci95"] = [0.48, 0.8]  # includes chance
    resign(head)
    assert any("does not exclude 0.5" in r for r in refusals(ModelCard.from_dict(d), "x"))
    head["evidence"]["ci95"] = [0.6, 0.8]
    head["evidence"]["calibration"]["slope"] = 0.3  # far too extreme
    resign(head)
    assert any("slope 0.30" in r for r in refusals(ModelCard.from_dict(d), "x"))


def test_one_labelled_validation_frame_of_one_class_no_longer_validates_a_head():
    """The old rule: real + any validation label = shown. Now it takes evidence per class."""
    d = tiny_card({"fibrosis": FIB}, "real", validated=True)  # what training wrote for a 1-frame validation set
    card = ModelCard.from_dict(d)
    assert not shown(card, "fibrosis")
    assert any("no evidence" in r for r in refusals(card, "fibrosis"))


@pytest.mark.parametrize(
    "field, value",
    [("validated_on_real", "false"), ("trained", 1), ("label_source", "REAL"), ("n_val_labels", "3"), ("evidence", [])],
)
def test_card_fields_are_strictly_typed(field, value):
    d = tiny_card({"fibrosis": FIB})
    d["heads"]["fibrosis"][field] = value
    with pytest.raises(UserError, match=f"heads.fibrosis.{field}|label_source must be one of"):
        ModelCard.from_dict(d, "m.json")


def _signed_checkpoint(tmp_path):
    d = tiny_card({"fibrosis": FIB})
    save_checkpoint(tmp_path / "m", build_model(**d["model"]), d)
    card = read_card(tmp_path / "m")
    card.heads["fibrosis"] = ModelCard.from_dict({**d, "heads": {"fibrosis": approved_head(FIB)}}).heads["fibrosis"]
    bind_gate(tmp_path / "m", card)
    return tmp_path / "m"


def test_signed_off_entries_are_bound_to_the_weights_and_a_hand_edit_is_refused(tmp_path):
    stem = _signed_checkpoint(tmp_path)
    assert shown(read_card(stem), "fibrosis")
    raw = json.loads(stem.with_suffix(".json").read_text())
    for field, value in [("temperature", 0.5), ("evidence", dict(raw["heads"]["fibrosis"]["evidence"], value=0.99))]:
        edited = copy.deepcopy(raw)
        edited["heads"]["fibrosis"][field] = value
        if field == "evidence":  # a careful forger also re-signs the sign-off's digest
            edited["heads"]["fibrosis"]["signoff"]["evidence_sha256"] = digest(value)
        stem.with_suffix(".json").write_text(json.dumps(edited))
        with pytest.raises(UserError, match=f"heads.fibrosis.{field} differs from what was signed off"):
            read_card(stem)
    stem.with_suffix(".json").write_text(json.dumps(raw))
    assert shown(read_card(stem), "fibrosis")


def test_a_sign_off_added_by_hand_is_refused(tmp_path):
    d = tiny_card({"fibrosis": FIB})
    save_checkpoint(tmp_path / "m", build_model(**d["model"]), d)
    raw = json.loads((tmp_path / "m.json").read_text())
    raw["heads"]["fibrosis"] = approved_head(FIB)
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match="heads.fibrosis.signoff is not bound"):
        read_card(tmp_path / "m")


def _real_checkpoint(tmp_path):
    d = tiny_card({"fibrosis": FIB}, "real", validated=True)
    d["heads"]["fibrosis"]["kind"] = "ordinal"
    d["heads"]["fibrosis"]["label_declaration"] = {"by": "Dr Test", "date": "2026-12-04", "command": "x"}
    d["model"]["heads"] = {"fibrosis": {"classes": FIB, "kind": "ordinal"}}
    save_checkpoint(tmp_path / "m", build_model(**d["model"]), d)
    return tmp_path / "m"


def test_approve_prints_the_evidence_refuses_weak_evidence_and_signs_off_strong(tmp_path, capsys):
    from models.approve import main as approve

    stem = _real_checkpoint(tmp_path)
    weak = passing_results(FIB, n_per_class=12)  # 12 cases per class < 20
    (tmp_path / "weak.json").write_text(json.dumps({"image": {"folds": [0, 1], "heads": {"fibrosis": weak}}}))
    args = [str(stem), "--head", "fibrosis", "--by", "Dr Test", "--yes"]
    assert approve([*args, "--evidence", str(tmp_path / "weak.json")]) == 2
    out = capsys.readouterr()
    assert "cases_per_class: {'F0': 12" in out.out and "too few labelled cases" in out.err
    assert not shown(read_card(stem), "fibrosis") and read_card(stem).heads["fibrosis"].signoff is None

    good = passing_results(FIB)
    (tmp_path / "cv.json").write_text(json.dumps({"image": {"folds": [0, 1], "heads": {"fibrosis": good}}}))
    assert approve([*args, "--evidence", str(tmp_path / "cv.json")]) == 0
    card = read_card(stem)
    assert shown(card, "fibrosis") and card.heads["fibrosis"].signoff["by"] == "Dr Test"
    assert (
        card.heads["fibrosis"].evidence["source"] == "cv"
        and card.heads["fibrosis"].evidence["rule"]["min_cases_per_class"] == 20
    )


def test_approve_refuses_test_results_of_another_checkpoint_or_an_unlocked_set(tmp_path, capsys):
    from models.approve import main as approve

    stem = _real_checkpoint(tmp_path)
    res = {"heads": {"fibrosis": passing_results(FIB)}}
    doc = {"config": {}, "results": {"test": res}, "checkpoint": {"save_id": "other", "locked_test_sets": ["test"]}}
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    args = [str(stem), "--head", "fibrosis", "--by", "Dr Test", "--yes", "--evidence", str(tmp_path / "metrics.json")]
    assert approve(args) == 2 and "not computed with this checkpoint" in capsys.readouterr().err
    doc["checkpoint"] = {"save_id": read_card(stem).save_id, "locked_test_sets": []}
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    assert approve(args) == 2 and "not a locked test split" in capsys.readouterr().err
    doc["checkpoint"]["locked_test_sets"] = ["test"]
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    assert approve(args) == 0 and read_card(stem).heads["fibrosis"].evidence["source"] == "test"


def test_approve_without_a_named_label_declaration_is_refused(tmp_path, capsys):
    from models.approve import main as approve

    d = tiny_card({"fibrosis": FIB}, "real", validated=True)  # real, but nobody declared it
    save_checkpoint(tmp_path / "m", build_model(**d["model"]), d)
    (tmp_path / "cv.json").write_text(json.dumps({"image": {"heads": {"fibrosis": passing_results(FIB, "nominal")}}}))
    code = approve(
        [str(tmp_path / "m"), "--head", "fibrosis", "--by", "X", "--yes", "--evidence", str(tmp_path / "cv.json")]
    )
    assert code == 2 and "declared real by a named person" in capsys.readouterr().err


def test_a_legacy_real_head_can_be_declared_at_sign_off_and_nothing_else_can(tmp_path, capsys):
    from models.approve import main as approve

    d = tiny_card({"fibrosis": FIB}, "real", validated=True)  # trained before declarations were recorded
    save_checkpoint(tmp_path / "m", build_model(**d["model"]), d)
    (tmp_path / "cv.json").write_text(json.dumps({"image": {"heads": {"fibrosis": passing_results(FIB, "nominal")}}}))
    args = [str(tmp_path / "m"), "--head", "fibrosis", "--by", "X", "--yes", "--evidence", str(tmp_path / "cv.json")]
    assert approve([*args, "--declare-labels", "Dr Y"]) == 0
    decl = read_card(tmp_path / "m").heads["fibrosis"].label_declaration
    assert decl["by"] == "Dr Y" and "declared at sign-off" in decl["command"]
    assert approve([*args, "--declare-labels", "Dr Z"]) == 2  # already declared: never re-declared
    assert "only for a head whose card says 'real' with no recorded declaration" in capsys.readouterr().err
    s = tiny_card({"fibrosis": FIB}, "synthetic")
    save_checkpoint(tmp_path / "s", build_model(**s["model"]), s)
    assert approve([str(tmp_path / "s"), *args[1:], "--declare-labels", "Dr Y"]) == 2  # synthetic stays synthetic


def test_approve_refuses_evidence_of_other_head_inputs(tmp_path, capsys):
    from models.approve import main as approve

    stem = _real_checkpoint(tmp_path)  # head_inputs: image (the default)
    doc = {
        "image": {"heads": {"fibrosis": passing_results(FIB)}},
        "fused": {"heads": {"fibrosis": passing_results(FIB)}},
    }
    (tmp_path / "cv.json").write_text(json.dumps(doc))
    args = [str(stem), "--head", "fibrosis", "--by", "X", "--yes", "--evidence", str(tmp_path / "cv.json")]
    assert approve([*args, "--variant", "fused"]) == 2 and "heads read 'image'" in capsys.readouterr().err
    assert approve(args) == 0 and "variant image" in read_card(stem).heads["fibrosis"].evidence["where"]
