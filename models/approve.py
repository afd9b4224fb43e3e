"""Sign off a head for display to clinicians, on evidence that chose nothing.

    python -m models.approve CHECKPOINT --head fibrosis --by "Dr A. Name" --evidence runs/cv/cv_results.json
    python -m models.approve CHECKPOINT --head fibrosis --by NAME --evidence eval/metrics.json --set test

The evidence is one head's case-level results from pooled out-of-fold predictions (``python -m metrics.cv``,
``cv_results.json``; ``--variant`` picks the head inputs, default the checkpoint's) or from a locked test split
(``evaluate.py``'s ``metrics.json`` of this checkpoint; ``--set`` names the split). The command prints the
evidence and every reason the display gate (models/gate.py) would refuse it. When nothing is refused it asks you to
type the head's name (``--yes`` skips the question), then records the evidence and the sign-off in the card and
binds the head's card entry to the weights (models/checkpoint.py ``bind_gate``). Exit codes: 0 signed off, 2 refused
or a user error, 1 a bug.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from models.checkpoint import bind_gate, checkpoint_stem, read_card
from models.gate import GateRule, digest, evidence_from_results, evidence_refusals, refuse_ensemble_results


def load_evidence(
    path: Path, head: str, *, variant: str | None, test_set: str | None, save_id: str | None
) -> tuple[dict[str, Any], str, str]:
    """(the head's score_head result, source 'cv' | 'test', where) from a cv_results.json or a metrics.json."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read evidence {path} ({e})") from None
    if isinstance(d, dict) and "results" in d and "config" in d:  # evaluate.py
        ck = d.get("checkpoint") or {}
        if save_id is not None and ck.get("save_id") != save_id:
            raise UserError(f"{path} was not computed with this checkpoint (save id differs): run evaluate.py on it")
        refuse_ensemble_results(d, path)
        sets = d["results"]
        name = test_set or (next(iter(sets)) if len(sets) == 1 else None)
        if name not in sets:
            raise UserError(f"{path}: give --set, one of {sorted(sets)}")
        if name not in (ck.get("locked_test_sets") or []):
            raise UserError(
                f"{path}: set '{name}' is not a locked test split (only manifest rows with split=test, never "
                "seen by training, count)"
            )
        res = (sets[name].get("heads") or {}).get(head)
        where = f"{path.name}: test set {name}"
        source = "test"
    elif isinstance(d, dict) and d:  # metrics.cv: variant -> {"heads": ...}
        name = variant or (next(iter(d)) if len(d) == 1 else None)
        if name not in d:
            raise UserError(f"{path}: give --variant, one of {sorted(d)}")
        res = (d[name].get("heads") or {}).get(head)
        where = f"{path.name}: cross-validation variant {name}, folds {d[name].get('folds')}"
        source = "cv"
    else:
        raise UserError(f"{path} is neither metrics.cv's cv_results.json nor evaluate.py's metrics.json")
    if res is None:
        raise UserError(f"{path} holds no results for head '{head}'")
    return res, source, where


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.approve", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="NAME (or NAME.safetensors / NAME.json)")
    ap.add_argument("--head", required=True)
    ap.add_argument("--by", required=True, help="the name of the person who signs off")
    ap.add_argument("--evidence", required=True, help="cv_results.json (metrics.cv) or metrics.json (evaluate.py)")
    ap.add_argument("--variant", default=None, help="cross-validation variant (default: the checkpoint's inputs)")
    ap.add_argument("--set", dest="test_set", default=None, help="evaluate.py test set name")
    rule = GateRule()
    ap.add_argument("--min-cases", type=int, default=rule.min_cases_per_class, help="labelled cases per class")
    ap.add_argument("--min-auroc", type=float, default=rule.min_auroc, help="floor for the AUROC lower bound")
    ap.add_argument("--min-qwk", type=float, default=rule.min_qwk, help="floor for the QWK lower bound")
    ap.add_argument("--max-ece", type=float, default=rule.max_case_ece, help="largest case-level ECE")
    ap.add_argument("--yes", action="store_true", help="do not ask (for scripts; the evidence is still printed)")
    ap.add_argument(
        "--declare-labels",
        metavar="NAME",
        default=None,
        help="a checkpoint trained before declarations were recorded (its card says the labels are real, but not "
        "who said so): NAME vouches for them now; recorded as declared at sign-off",
    )
    a = ap.parse_args(argv)
    try:
        if not a.by.strip():
            raise UserError("--by must name the person who signs off")
        stem = checkpoint_stem(a.checkpoint)
        card = read_card(stem)
        info = card.heads.get(a.head)
        if info is None:
            raise UserError(f"{stem}: no head '{a.head}' (heads: {', '.join(card.heads) or 'none'})")
        if a.declare_labels:
            if info.label_source != "real" or info.label_declaration:
                raise UserError(
                    f"--declare-labels is only for a head whose card says 'real' with no recorded declaration "
                    f"(this one: {info.label_source}, declared {bool(info.label_declaration)}); declare labels when "
                    "training (data.label_source.HEAD=real data.label_declared_by=NAME)"
                )
            info.label_declaration = {
                "by": a.declare_labels.strip(),
                "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "command": "declared at sign-off (python -m models.approve --declare-labels): the checkpoint "
                "predates recorded declarations",
            }
        inputs = str(card.model.get("head_inputs") or "image")
        variant = a.variant or inputs
        if variant != inputs:  # the evidence must be of this model's recipe, not of another input's
            raise UserError(
                f"--variant {variant}: this checkpoint's heads read '{inputs}' (model.head_inputs); sign off on "
                f"the cross-validation of the same inputs (--variant {inputs})"
            )
        res, source, where = load_evidence(
            Path(a.evidence), a.head, variant=variant, test_set=a.test_set, save_id=card.save_id
        )
        if list(res.get("classes") or []) != list(info.classes):
            raise UserError(f"{a.evidence}: head '{a.head}' has classes {res.get('classes')}, not {info.classes}")
        rule = GateRule(
            min_cases_per_class=a.min_cases, min_auroc=a.min_auroc, min_qwk=a.min_qwk, max_case_ece=a.max_ece
        )
        evidence = evidence_from_results(res, source=source, where=where, rule=rule)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Evidence for head '{a.head}' of {stem.name} ({where}):")
    for k in ("n_cases", "n_scored", "abstained", "cases_per_class", "metric", "value", "ci95", "case_ece"):
        print(f"  {k}: {evidence[k]}")
    print(f"  calibration: {evidence['calibration']}")
    print(f"  labels: {info.label_source}, declared by {(info.label_declaration or {}).get('by')}")
    problems = evidence_refusals(info, evidence)
    if info.label_source != "real" or not (info.label_declaration or {}).get("by"):
        problems.insert(0, "labels not declared real by a named person at training (data.label_declared_by)")
    if problems:
        for p in problems:
            print(f"refused: {p}", file=sys.stderr)
        return 2
    if not a.yes:
        answer = input(f"Type '{a.head}' to sign off this head for display to clinicians: ")
        if answer.strip() != a.head:
            print("not signed off", file=sys.stderr)
            return 2
    info.evidence = evidence
    info.signoff = {
        "by": a.by.strip(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "evidence_sha256": digest(evidence),
    }
    bind_gate(stem, card)
    print(f"signed off: {a.head} by {a.by.strip()}; the card is bound to {stem.name}.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
