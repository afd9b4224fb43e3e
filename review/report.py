"""The case report: one self-contained folder (report.html + overlay video + plots + key frames), opens offline."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.io import atomic_write, write_image_atomic
from models.checkpoint import head_is_clinical
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


def timeline_plot(path: Path, records: Sequence[dict[str, Any]], card: dict[str, Any]) -> None:
    """Lesion probability and area over time; head estimates only for clinically validated heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["time"] for r in records])
    shown = [h for h in card.get("heads", {}) if head_is_clinical(card, h)]
    fig, axes = plt.subplots(2 + len(shown), 1, figsize=(9, 2.2 * (2 + len(shown))), sharex=True)
    axes[0].plot(t, [r["lesion_probability"] for r in records], color="tab:green")
    axes[0].set_ylabel("lesion prob.")
    axes[0].set_ylim(0, 1.02)
    axes[1].plot(t, [100 * r["area_fraction"] for r in records], color="tab:orange")
    axes[1].set_ylabel("area (% of view)")
    for ax, h in zip(axes[2:], shown):
        for c in card["heads"][h]["classes"]:
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


def shown_heads(card: dict[str, Any]) -> list[str]:
    return list(CLINICAL_TARGETS) + [h for h in card.get("heads", {}) if h not in CLINICAL_TARGETS]


def head_row(head: str, est: dict[str, Any] | None, card: dict[str, Any]) -> str:
    """One table row: the validated estimate, 'insufficient evidence', or why nothing is shown."""
    e = html.escape
    info = card.get("heads", {}).get(head)
    if info is None or not head_is_clinical(card, head):
        why = ("not available: no validated model" if info is None else
               "not shown: this head was not trained and validated on real labels")
        return f"<tr><td>{e(head)}</td><td colspan=4 class=note>{why}</td></tr>"
    val = info.get("validation", {}).get("frame", {})
    auc = val.get("auroc")
    val_txt = (f"validation AUROC {auc:.2f}" if auc is not None else "validated") + \
        f" ({info.get('n_val_labels', '?')} labelled frames)"
    if est is None or est.get("abstain"):
        reason = (est or {}).get("reason") or "no frames"
        return (f"<tr><td>{e(head)}</td><td>insufficient evidence</td><td colspan=2 class=note>{e(reason)}</td>"
                f"<td>{e(val_txt)}</td></tr>")
    return (f"<tr><td>{e(head)}</td><td><b>{e(str(est['estimate']))}</b></td><td>{est['confidence']:.2f}</td>"
            f"<td>{est['frames']}</td><td>{e(val_txt)}</td></tr>")


def write_report(out_dir: Path, *, stem: str, records: Sequence[dict[str, Any]], summary: dict[str, Any],
                 card: dict[str, Any], key_frames: Sequence[tuple[float, int, np.ndarray]], overlay: str | None
                 ) -> Path:
    timeline_plot(out_dir / "timeline.png", records, card)
    kf_html = []
    for score, index, image in key_frames:
        name = f"keyframes/{stem}_{index:06d}.jpg"
        write_image_atomic(out_dir / name, image)
        rec = next(r for r in records if r["index"] == index)
        kf_html.append(f'<figure><img src="{name}" alt="frame {index}"><figcaption>frame {index} at '
                       f'{timecode(rec["time"])}, lesion {score:.2f}</figcaption></figure>')
    e = html.escape
    heads_rows = "".join(head_row(h, summary["heads"].get(h), card) for h in shown_heads(card))
    largest = summary.get("largest_lesion")
    video_html = (f'<video id="overlay" controls preload="auto" muted src="{e(overlay)}" '
                  f'type="video/mp4"></video>') if overlay else ""
    errors_html = "".join(f"<li>{e(x['error'])}</li>" for x in summary.get("errors", []))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>endolift review: {e(stem)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:980px;color:#222}}
video{{width:100%;max-width:960px;background:#000}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
.kf{{display:grid;grid-template-columns:repeat(3,1fr);gap:.6em}} figure{{margin:0}} figcaption{{font-size:.85em}}
.note{{color:#8a5a00}} .use{{background:#fff4e0;padding:.5em;border-left:4px solid #e0a000}}
</style></head><body>
<h1>Case review: {e(stem)}</h1>
<p class=use><b>Intended use.</b> {e(card.get('intended_use', DEFAULT_USE))}</p>
{video_html}
<h2>Summary</h2>
<table>
<tr><th>frames</th><td>{summary['frames']}</td></tr>
<tr><th>frames with a lesion</th><td>{summary['frames_with_lesion']} ({100 * summary['lesion_frame_fraction']:.0f}%)</td></tr>
<tr><th>max lesion probability</th><td>{summary['max_lesion_probability']:.2f}</td></tr>
<tr><th>largest lesion</th><td>{f"{largest['area_px']} px at {timecode(largest['time'])} ({e(largest['name'])})"
                                 if largest else "none"}</td></tr>
</table>
<h2>Estimates (video level)</h2>
<table><tr><th>estimate</th><th>result</th><th>confidence</th><th>informative frames</th><th>validation</th></tr>
{heads_rows}</table>
<p class=note>An estimate is shown only when the model card says its head was trained <i>and</i> validated on real
labels; it is aggregated over informative frames (lesion in view, not blurry or over-exposed) and withheld
("insufficient evidence") with too few of them or too low a confidence.</p>
{"<h2>Problems with the input</h2><ul>" + errors_html + "</ul>" if errors_html else ""}
<h2>Timeline</h2><img src="timeline.png" alt="lesion probability and area over time">
<h2>Key frames</h2><div class=kf>{''.join(kf_html)}</div>
<h2>Model</h2>
<p>{e(str(card.get('name')))}, trained {e(str(card.get('date')))}, commit {e(str(card.get('git_commit'))[:12])}.
Per-frame details: <code>predictions.jsonl</code>; summary: <code>summary.json</code>.</p>
{STATE_SCRIPT}</body></html>
"""
    path = out_dir / "report.html"
    with atomic_write(path) as tmp:
        tmp.write_text(page)
    return path
