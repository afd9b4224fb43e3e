"""The case report: one self-contained folder (report.html + overlay video + plots + key frames), opens offline.

The page is rendered from ``review/templates/report.html`` by Jinja2 with autoescaping on, so every value that
reaches it (file names, labels, error messages, card fields) is escaped in one place; file names inside URLs are
also percent-encoded. A report travels between people: nothing in an input's name may run as script in it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np
from markupsafe import Markup

from data.io import atomic_write, write_image_atomic
from models.card import ModelCard
from review.overlay import timecode

STATE_SCRIPT = """<script>
// Records the video's state for automated checks (tests/test_report_browser.py); does nothing visible.
(function () {
  var b = document.body, v = document.getElementById("overlay");
  b.dataset.video = v ? "loading" : "none";
  if (v) {
    v.addEventListener("canplay", function () { b.dataset.video = "canplay"; });
    v.addEventListener("error", function () { b.dataset.video = "error"; });
    if (v.readyState >= 3) { b.dataset.video = "canplay"; }
  }
  window.addEventListener("error", function (e) { b.dataset.jsError = String(e.message); });
})();
</script>
"""

DEFAULT_USE = ("Research use only. Not a medical device; estimates must not drive clinical decisions. "
               "Lesion outlines are from a polyp-segmentation model trained on public colonoscopy data.")


def timeline_plot(path: Path, records: Sequence[dict[str, Any]], card: ModelCard) -> None:
    """Lesion probability and area over time; head estimates only for clinically validated heads."""
    from metrics.plots import pyplot

    plt = pyplot()

    t = np.array([r["time"] for r in records])
    shown = [h for h in card.heads if card.is_clinical(h)]
    fig, axes = plt.subplots(2 + len(shown), 1, figsize=(9, 2.2 * (2 + len(shown))), sharex=True)
    axes[0].plot(t, [r["lesion_probability"] for r in records], color="tab:green")
    axes[0].set_ylabel("lesion prob.")
    axes[0].set_ylim(0, 1.02)
    axes[1].plot(t, [100 * r["area_fraction"] for r in records], color="tab:orange")
    axes[1].set_ylabel("area (% of view)")
    for ax, h in zip(axes[2:], shown):
        for c in card.heads[h].classes:
            ax.plot(t, [r["heads"][h]["probs"][c] for r in records], label=c)
        ax.set_ylabel(h)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


CLINICAL_TARGETS = ("fibrosis", "lift")  # always listed, so a reader sees when no validated model exists


def shown_heads(card: ModelCard) -> list[str]:
    return list(CLINICAL_TARGETS) + [h for h in card.heads if h not in CLINICAL_TARGETS]


def head_row(head: str, est: dict[str, Any] | None, card: ModelCard) -> dict[str, Any]:
    """One table row: the validated estimate, 'insufficient evidence', or why nothing is shown."""
    info = card.heads.get(head)
    if info is None or not info.clinical:
        return {"head": head, "state": "hidden",
                "why": "not available: no validated model" if info is None else
                       "not shown: this head was not trained and validated on real labels"}
    auc = (info.validation or {}).get("frame", {}).get("auroc")
    validation = (f"validation AUROC {auc:.2f}" if auc is not None else "validated") + \
        f" ({info.n_val_labels} labelled frames)"
    if est is None or est.get("abstain"):
        return {"head": head, "state": "abstain", "reason": (est or {}).get("reason") or "no frames",
                "validation": validation}
    return {"head": head, "state": "shown", "estimate": str(est["estimate"]), "confidence": est["confidence"],
            "frames": est["frames"], "validation": validation}


def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html")


def write_report(out_dir: Path, *, stem: str, records: Sequence[dict[str, Any]], summary: dict[str, Any],
                 card: ModelCard, key_frames: Sequence[tuple[float, int, np.ndarray]], overlay: str | None
                 ) -> Path:
    timeline_plot(out_dir / "timeline.png", records, card)
    frames = []
    for score, index, image in key_frames:
        name = f"{stem}_{index:06d}.jpg"
        write_image_atomic(out_dir / "keyframes" / name, image)
        rec = next(r for r in records if r["index"] == index)
        frames.append({"url": "keyframes/" + quote(name), "index": index, "timecode": timecode(rec["time"]),
                       "score": score})
    largest = summary.get("largest_lesion")
    page = _template().render(
        stem=stem, intended_use=card.intended_use or DEFAULT_USE, overlay_url=quote(overlay) if overlay else None,
        summary=summary, largest=dict(largest, timecode=timecode(largest["time"])) if largest else None,
        head_rows=[head_row(h, summary["heads"].get(h), card) for h in shown_heads(card)],
        errors=[x["error"] for x in summary.get("errors", [])], key_frames=frames,
        model_name=str(card.name), model_date=str(card.date),
        model_commit=str(card.git_commit)[:12], state_script=Markup(STATE_SCRIPT))
    path = out_dir / "report.html"
    with atomic_write(path) as tmp:
        tmp.write_text(page)
    return path
