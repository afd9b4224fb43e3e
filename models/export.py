"""Ship a trained checkpoint: fp16 weights + card with provenance, test results and intended use, + MODEL_CARD.md.
(Over 350 lines on purpose: MODEL_CARD.md's sections are written beside the card fields they render, one per head.)

Segmenter (a full training run):
    python -m models.export --src outputs/train/<date_time>/checkpoints/best \
        --dst checkpoints/endolift_polyp_unet_mnv2 --metrics outputs/evaluate/shipped/metrics.json \
        --train-log outputs/train/<date_time>/metrics.csv --wall-hours 2.1
Heads trained on a shipped segmenter (trainer.freeze=segmentation), added to it in place:
    python -m models.export --add-heads outputs/train/<date_time>/checkpoints/best \
        --dst checkpoints/endolift_polyp_unet_mnv2 --metrics outputs/evaluate/heads/metrics.json --wall-hours 0.3
The segmenter's weights must be bit-identical to the shipped ones (checked), so its test results still hold.
MODEL_CARD.md is rendered from the cards alone (render_model_card), so it can only describe the models it ships with:
one section per checkpoint in the folder (one per profile when two ship).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.files import atomic_write
from models import gate
from models.card import HeadCard, InputSpec, ModelCard
from models.checkpoint import checkpoint_stem, load_checkpoint, read_card, save_checkpoint
from models.predictor_settings import PROFILES

INTENDED_USE = (
    "Research use only; not a medical device and not for clinical decisions. Outlines polyps/lesions "
    "in colonoscopy frames; trained on public data (Kvasir-SEG, CVC-ClinicDB: research and education "
    "only, no commercial use)."
)
TARGETS = ("fibrosis", "lift")
NO_TARGET_HEAD = "No fibrosis or lift head: no public dataset labels them. Train them on your own labels (README)."
LIMITS = [
    "Trained on colonoscopy polyp images only: not validated on rectal tumours after chemoradiotherapy, ulcerated "
    "lesions, ESD/EFTR scenes or other organs.",
    NO_TARGET_HEAD,
    "The standard CVC-ClinicDB test list shares every one of its sequences with the training list (near-duplicate "
    "frames), which flatters ClinicDB scores; see the held-out-sequence row.",
    "Kvasir-SEG and CVC-ClinicDB come from a few centres and scopes; expect lower scores on other equipment.",
]
SEG_KEYS = (
    "n_images",
    "mean_dice",
    "mean_iou",
    "weighted_f",
    "s_measure",
    "max_e_measure",
    "mae",
    "dice@0.5",
    "iou@0.5",
    "hd95",
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ci(v: Any, ci: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def head_section(name: str, info: HeadCard, card: ModelCard | None = None) -> str:
    """One head's part of MODEL_CARD.md, from its card entry only; whether infer.py shows it is the display gate's
    answer (models/gate.py), the one rule infer.py applies, for ``card`` (default: a card holding only this head)."""
    if card is None:  # a notebook may print one head's section from its entry alone
        card = ModelCard(name=name, model={}, input=InputSpec(size=1), heads={name: info})
    refused = gate.refusals(card, name)
    lines = [
        f"### `{name}` ({info.kind}: {', '.join(info.classes)})",
        "",
        f"- Label source: **{info.label_source}**"
        + (
            " - trained and validated on real labels, so infer.py shows it"
            if not refused
            else f" - never shown by infer.py: {'; '.join(refused)}"
        ),
        f"- Label definition: {info.label_definition or 'not given'}",
        f"- Labelled frames: train {info.counts.get('train')}, validation {info.counts.get('val')}",
        f"- Temperature (fitted on validation): {info.temperature:.3f}",
    ]
    decl, ev, so = info.label_declaration or {}, info.evidence or {}, info.signoff or {}
    if decl.get("by"):
        lines.append(f"- Labels declared real by {decl['by']} ({decl.get('date')})")
    if ev:
        per_class = ", ".join(f"{c} {n}" for c, n in (ev.get("cases_per_class") or {}).items())
        lines.append(
            f"- Display evidence ({ev.get('source')}: {ev.get('where')}): case {str(ev.get('metric')).upper()} "
            f"{_ci(ev.get('value'), ev.get('ci95'))}, case ECE {_ci(ev.get('case_ece'), None)}, cases per class "
            f"{per_class}; rule {ev.get('rule')}"
        )
    if so.get("by"):
        lines.append(f"- Signed off for display by {so['by']} ({so.get('date')}), `python -m models.approve`")
    tr = info.training
    if tr:
        lines.append(
            f"- Trained: `{tr.get('command')}`, epoch {tr.get('epoch')} chosen by validation NLL, "
            f"segmenter frozen from `{(tr.get('frozen_from') or {}).get('name')}`"
        )
    rows = [("validation", info.validation)] + list((info.test or {}).items())
    lines += [
        "",
        "| set | frames | AUROC [95% CI] | ECE before / after temperature | area-only baseline AUROC |",
        "| --- | --- | --- | --- | --- |",
    ]
    for set_name, r in rows:
        if not r:
            continue
        f, b = r["frame"], r.get("area_baseline") or {}
        lines.append(
            f"| {set_name} | {f['n']} | {_ci(f.get('auroc'), f['ci95'].get('auroc'))} | "
            f"{f.get('ece_before_temperature', float('nan')):.3f} / {f['ece']:.3f} | "
            f"{_ci(b.get('auroc'), b.get('ci95')) if b else 'n/a'} |"
        )
    return "\n".join(lines) + "\n"


def render_model_card(card: ModelCard, size_mb: float) -> str:
    """MODEL_CARD.md from the card: every statement comes from a field of it."""
    m, data, comp, inp = card.model, card.data, card.compute, card.input
    cfg = card.training.get("config", {})
    opt = cfg.get("optim", {}).get("optimizer", {})
    rows = "\n".join(
        f"| {k} | {v['n_images']} | {v['mean_dice']:.3f} | {v['dice@0.5']:.3f} | {v['mean_iou']:.3f} | "
        f"{v['weighted_f']:.3f} | {v['s_measure']:.3f} | {v['max_e_measure']:.3f} | {v['mae']:.3f} | {v['hd95']:.1f} |"
        for k, v in card.test_results.items()
    )
    heads = card.heads
    heldout = (
        "\n`clinicdb_heldout_seq`: all 44 frames of ClinicDB sequences 6 and 17, which the model never trained on "
        "(they\nformed the ClinicDB part of the validation split, so they did pick the best epoch). The standard "
        "`clinicdb`\nlist instead shares every sequence with the training list.\n"
        if "clinicdb_heldout_seq" in card.test_results
        else ""
    )
    sources = ", ".join(f"{s.get('name')} ({s.get('split_file') or 'all'})" for s in data.get("train_sources", []))
    return (
        f"""# Model card: {card.name}

Generated by `python -m models.export` from the card `{card.name}.json`; every number below comes from `train.py`
and `evaluate.py` runs that anyone can repeat (README, "Results").

## Intended use
{card.intended_use or INTENDED_USE}{profile_line(card)}

## Model
{m["arch"]} (segmentation_models_pytorch) with a {m["encoder"]} encoder (initialisation: {m.get("weights")}),
decoder {m.get("decoder") or "smp default"}; {(card.parameters or 0) / 1e6:.2f} M parameters; weights stored as
{card.weights_dtype or "float32"} safetensors ({size_mb:.1f} MB). Input: RGB resized to {inp.size}x{inp.size}
({inp.resize}), normalised with mean {inp.mean} / std {inp.std}; outputs: lesion probability per pixel
{"and the heads below" if heads else "(no attribute heads)"}.

## Training data (segmenter)
Sources: {sources}; {data.get("n_train")} images trained on, {data.get("n_val")} held out for validation by group.
Licence of the weights: {card.licence.get("weights", "see the training data")}. Kvasir-SEG (Jha et al., MMM 2020) and
CVC-ClinicDB (Bernal et al., CMIG 2015) are free for research and education with citation; commercial use needs the
owners' permission.

## Recipe (segmenter)
`{training_command(card)}`: loss
{cfg.get("loss", {}).get("kind")}, {opt.get("_target_", "?").split(".")[-1]} lr {opt.get("lr")}, weight decay
{opt.get("weight_decay")}, batch {cfg.get("data", {}).get("batch_size")}, {comp.get("epochs")} epochs, multi-scale
{cfg.get("trainer", {}).get("multiscale")}, EMA {cfg.get("trainer", {}).get("ema")}, precision {comp.get("precision")}.
Best epoch by validation mean Dice: epoch {card.epoch}
(val Dice {card.metrics.get("val/dice", float("nan")):.3f}).
{card.notes}

## Compute
{comp.get("hardware")}, {comp.get("threads")} threads, no GPU; {comp.get("epochs")} epochs in
{comp.get("wall_hours", 0):.1f} h.

## Test results, segmentation (never used for any choice)
Mean Dice / IoU etc. per PraNet's toolbox (mean over 256 thresholds); Dice@0.5 at a fixed 0.5 threshold;
HD95 in pixels at the mask's resolution.

| set | images | mean Dice | Dice@0.5 | mean IoU | weighted F | S-measure | max E | MAE | HD95 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
{heldout}
## Attribute heads
{chr(10).join(head_section(h, v, card=card) for h, v in heads.items()) if heads else "None."}
{missing_targets(heads)}

## Known limits
"""
        + "\n".join(f"- {x}" for x in (card.known_limits or LIMITS))
        + "\n"
    )


def profile_line(card: ModelCard) -> str:
    """The settings profile the checkpoint was shipped for (export --profile), as MODEL_CARD.md's sentence."""
    p = card.extra.get("profile")
    return f"\n\nShipped for `profile={p}` (`configs/profile/{p}.yaml`)." if p else ""


def missing_targets(heads: dict[str, HeadCard]) -> str:
    """The line saying which of fibrosis and lift the card has no head for (empty when it has both): a statement
    about the card's heads, so it cannot contradict a fibrosis or lift head that the card holds."""
    missing = [t for t in TARGETS if t not in heads]
    if len(missing) == len(TARGETS):
        return (
            "Fibrosis (Matsumoto F0/F1/F2) and lift (adequate / partial / non-lifting): no head: no public dataset "
            "labels them, so the report says 'not available: no validated model'."
        )
    said = "no head, so the report says 'not available: no validated model'."
    return " ".join(f"{t.capitalize()}: {said}" for t in missing)


def known_limits(limits: list[str], *, heads: dict[str, HeadCard], dropped: set[str] = frozenset()) -> list[str]:
    """``limits`` kept true of a card with ``heads``: the no-fibrosis-or-lift limit only while the card has neither
    head (added when missing), and no limit that starts with the name of a head the card no longer has
    (``dropped``). The heads' own wording stays in their card entries (label_definition, label_source)."""
    has_target = bool(set(TARGETS) & set(heads))
    out = [
        x
        for x in limits
        if not (has_target and x == NO_TARGET_HEAD) and not x.startswith(tuple(f"{h} " for h in sorted(dropped)))
    ]
    return out if has_target or NO_TARGET_HEAD in out else out + [NO_TARGET_HEAD]


def training_command(card: ModelCard) -> str:
    """The command that trained ``card``'s weights: as train.py recorded it (or --command gave it), else the
    experiment named like the run."""
    return card.training.get("command") or f"python train.py experiment={card.training.get('config', {}).get('name')}"


def render_folder(dst: str | Path) -> str:
    """MODEL_CARD.md beside ``dst``: its section, and one for every other checkpoint this command shipped into the
    same folder (a card with ``source_checkpoint``; a training run's checkpoint lying there is not one), by name, so
    that shipping a second checkpoint (one per profile) keeps the first's section."""
    stem = checkpoint_stem(dst)
    sections = []
    for card_path in sorted(stem.parent.glob("*.json")):
        weights = card_path.with_suffix(".safetensors")
        if not weights.is_file():
            continue
        card = read_card(card_path)
        if card_path.with_suffix("") == stem or card.extra.get("source_checkpoint"):
            sections.append(render_model_card(card, weights.stat().st_size / 1e6))
    return "\n".join(sections)


def write_model_card(dst: str | Path) -> Path:
    md_path = checkpoint_stem(dst).parent / "MODEL_CARD.md"
    with atomic_write(md_path) as tmp:
        tmp.write_text(render_folder(dst))
    return md_path


def evaluated_results(metrics: str | None) -> dict[str, Any]:
    """evaluate.py's results for the card (``--metrics``), refused when other checkpoints were averaged in or flip TTA
    ran: a card's test results are one pass of the checkpoint, as profile=fast runs it."""
    if not metrics:
        return {}
    doc = json.loads(Path(metrics).read_text())
    gate.refuse_ensemble_results(doc, metrics)
    if (doc.get("checkpoint") or {}).get("tta"):
        raise UserError(
            f"{metrics} was computed with flip TTA: a card's test results are one pass of the checkpoint "
            "(evaluate.py profile=fast)"
        )
    return doc["results"]


def write_outputs(dst: str, model: torch.nn.Module, card: ModelCard) -> None:
    render_folder(dst)  # every card beside it must read before anything is written (one message naming it)
    weights = save_checkpoint(dst, model, card, dtype=torch.float16)
    size_mb = weights.stat().st_size / 1e6
    md_path = write_model_card(dst)
    print(f"wrote {weights} ({size_mb:.1f} MB) and {md_path}")


def add_heads(a: argparse.Namespace) -> None:
    """Put the heads of ``a.add_heads`` (trained on the frozen segmenter of ``a.dst``) into ``a.dst``."""
    base_model, base = load_checkpoint(a.dst)
    model, head_card = load_checkpoint(a.add_heads)
    ref = base_model.state_dict()
    new = model.state_dict()
    changed = [k for k in ref if not torch.equal(ref[k].half().float(), new[k].half().float())]
    if changed or set(ref) - set(new):
        raise UserError(
            f"{a.add_heads}: its segmenter differs from {a.dst}'s ({(changed or ['missing keys'])[0]}); "
            "train the heads with trainer.init_from=<the shipped checkpoint> trainer.freeze=segmentation"
        )
    results = evaluated_results(a.metrics)
    card = base  # the shipped segmenter's card, its heads replaced by the new run's
    card.model = dict(base.model, **{k: v for k, v in head_card.model.items() if k != "weights"})
    card.heads = head_card.heads
    for h, info in card.heads.items():
        info.training = {
            "command": training_command(head_card),
            "epoch": head_card.epoch,
            "git_commit": head_card.git_commit,
            "frozen_from": head_card.segmentation.get("frozen_from"),
            "wall_hours": a.wall_hours,
            "config": head_card.training["config"],
        }
        info.test = {
            name: {k: v for k, v in r["heads"][h].items() if k not in ("classes", "kind")}
            | {"frame": {k: v for k, v in r["heads"][h]["frame"].items() if k != "reliability"}}
            for name, r in results.items()
            if h in (r.get("heads") or {})
        }
    for name, r in results.items():  # the segmentation must still score as shipped
        seg, old = r.get("segmentation"), base.test_results.get(name)
        # bit-identical weights; only float summation order may differ between runs (measured: <= 1e-6)
        if seg and old and abs(seg["dice@0.5"] - old["dice@0.5"]) > 1e-5:
            raise UserError(
                f"{a.metrics}: {name} Dice@0.5 {seg['dice@0.5']:.6f} differs from the shipped "
                f"{old['dice@0.5']:.6f}: evaluate the exported checkpoint with the same settings"
            )
    card.parameters = sum(p.numel() for p in model.parameters())
    # each head described by its own card entry only: no wording about what a head is or is not beyond what its
    # label definition and source say (a sentence written for one dataset's head is wrong in another's card)
    card.intended_use = " ".join(
        [INTENDED_USE]
        + [
            f"The '{h}' head estimates: {info.label_definition or 'no label definition given'} "
            f"(label source: {info.label_source})."
            for h, info in card.heads.items()
        ]
    )
    card.known_limits = known_limits(
        base.known_limits or LIMITS, heads=card.heads, dropped=set(base.heads) - set(card.heads)
    )
    write_outputs(a.dst, model, card)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=None, help="a full training run's checkpoint (segmenter export)")
    ap.add_argument("--add-heads", default=None, help="a heads-only run's checkpoint, trained on --dst's segmenter")
    ap.add_argument("--dst", required=True)
    ap.add_argument(
        "--metrics",
        default=None,
        help="evaluate.py's metrics.json of the exported checkpoint "
        "(export once without it, evaluate the exported weights, export again with it)",
    )
    ap.add_argument("--train-log", default=None, help="train.py's metrics.csv (segmenter export)")
    ap.add_argument("--wall-hours", type=float, default=None, help="training wall time (with --src/--add-heads)")
    ap.add_argument("--onnx", action="store_true", help="export --dst's checkpoint to DST.onnx (models/onnx.py)")
    ap.add_argument("--onnx-int8", action="store_true", help="quantise DST.onnx to DST.int8.onnx (static int8)")
    ap.add_argument("--calibration", default=None, help="with --onnx-int8: a folder of images to calibrate on")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads training used (default: from the card)")
    ap.add_argument("--notes", default="")
    ap.add_argument("--profile", choices=PROFILES, default=None, help="the profile this checkpoint is shipped for")
    ap.add_argument(
        "--card-only",
        action="store_true",
        help="re-render MODEL_CARD.md from the cards (--dst's and those beside it)",
    )
    ap.add_argument(
        "--command", default=None, help="the training command line, for a run whose card predates recording it"
    )
    a = ap.parse_args(argv)
    if a.card_only:  # after a sign-off (python -m models.approve): the card changed, the weights did not
        read_card(a.dst)  # a readable card, or one message naming it
        print(f"wrote {write_model_card(a.dst)}")
        return None
    if a.onnx or a.onnx_int8:
        from data.io import list_images
        from models.onnx import export_onnx, quantize_int8

        if a.onnx_int8 and not a.calibration:
            ap.error("--onnx-int8 needs --calibration DIR (a folder of training images)")
        path = export_onnx(a.dst) if a.onnx else quantize_int8(a.dst, list(list_images(a.calibration).values()))
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return None
    if a.wall_hours is None:
        ap.error("--wall-hours is required with --src or --add-heads")
    if a.add_heads:
        return add_heads(a)
    if not (a.src and a.train_log):
        ap.error("--src and --train-log are required unless --add-heads is given")
    model, card = load_checkpoint(a.src)
    results = evaluated_results(a.metrics)
    with open(a.train_log) as f:
        log = list(csv.DictReader(f))
    card.resume = None
    card.extra["trained_git_commit"] = card.git_commit
    threads = a.threads or card.training.get("threads") or torch.get_num_threads()
    card.name, card.intended_use = Path(a.dst).name, INTENDED_USE
    card.known_limits = known_limits(LIMITS, heads=card.heads)
    card.licence = {
        "weights": "research and education only (inherits Kvasir-SEG and CVC-ClinicDB terms)",
        "code": "Apache-2.0",
    }
    card.test_results = {
        k: {m: v["segmentation"][m] for m in SEG_KEYS} for k, v in results.items() if v.get("segmentation")
    }
    card.compute = {
        "hardware": cpu_name(),
        "threads": threads,
        "wall_hours": a.wall_hours,
        "epochs": len(log),
        "precision": card.training["precision"],
    }
    card.parameters, card.weights_dtype = sum(p.numel() for p in model.parameters()), "float16"
    card.extra["source_checkpoint"], card.notes = str(a.src), a.notes
    if a.profile:  # the card names the profile it serves; configs/profile/<name>.yaml names the checkpoint
        card.extra["profile"] = a.profile
    if a.command:
        card.training["command"] = a.command
    write_outputs(a.dst, model, card)


if __name__ == "__main__":
    import sys

    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
