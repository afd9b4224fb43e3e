"""What a training run records besides its checkpoints: each epoch's running means, metrics.csv and TensorBoard per
epoch, splits.json, and, for a resumed run, the earlier run's history carried into the new folder."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

from core.files import atomic_write, clean_stale_partials, write_json_atomic


def open_run_logs(out_dir: Path, *, splits: dict[str, Any], resume: str | Path | None, start_epoch: int) -> Any:
    """Rank 0's run folder before the first epoch: temporary files of a killed earlier run in it are removed, the
    split summary is written (splits.json), a resumed run's earlier history is carried over (``continue_logs``, its
    line printed), and the TensorBoard writer is opened (purging the steps a resumed run redoes)."""
    from torch.utils.tensorboard import SummaryWriter

    clean_stale_partials(out_dir)
    write_json_atomic(out_dir / "splits.json", splits)
    if resume:  # one folder holds the whole run's logs
        print(continue_logs(resume, out_dir, start_epoch=start_epoch), flush=True)
    return SummaryWriter(str(out_dir / "tb"), purge_step=start_epoch if resume else None)


class EpochMeter:
    """An epoch's running sums: mean loss terms and images per second, for the progress bar and the epoch's stats."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n_images, self.n_steps, self.t0 = 0, 0, time.perf_counter()

    def add(self, terms: dict[str, Any], n_images: int) -> dict[str, str]:
        """Count one step's loss terms (tensors) and images; returns the progress bar's mean loss and images/s."""
        self.n_images += n_images
        self.n_steps += 1
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        rate_s = self.n_images / (time.perf_counter() - self.t0)
        return {"loss": f"{self.sums['total'] / self.n_steps:.4f}", "img_s": f"{rate_s:.1f}"}

    def stats(self) -> dict[str, float]:
        """The epoch's ``train/`` stats: each loss term's mean per step and the images per second."""
        stats = {f"train/{k}": v / max(1, self.n_steps) for k, v in self.sums.items()}
        stats["train/images_per_s"] = self.n_images / max(1e-9, time.perf_counter() - self.t0)
        return stats


def log_epoch(csv_path: Path, writer: Any, epoch: int, stats: dict[str, float]) -> None:
    """Append one epoch's stats to metrics.csv, TensorBoard and stdout."""
    row = {"epoch": epoch, **{k: round(v, 6) for k, v in stats.items()}}
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    for k, v in stats.items():
        writer.add_scalar(k, v, epoch)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def continue_logs(resume: str | Path, out_dir: Path, *, start_epoch: int) -> str:
    """A resumed run keeps one history: its own folder's metrics.csv starts with the earlier run's rows for the
    epochs before ``start_epoch`` and its tb/ with the earlier run's TensorBoard event files (the writer then purges
    their steps from ``start_epoch`` on, the epochs this run redoes), so that one folder holds the whole run; the
    earlier folder is left as it was, and resumed_from.json names it. Returns the line train.py prints."""
    resume = Path(resume)
    earlier = resume.parent.parent if resume.parent.name == "checkpoints" else resume.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    old_csv = earlier / "metrics.csv"
    if old_csv.is_file():
        lines = old_csv.read_text().splitlines(keepends=True)

        def before(line: str) -> bool:
            first = line.split(",", 1)[0].strip()
            return first.isdigit() and int(first) < start_epoch

        kept = lines[:1] + [x for x in lines[1:] if before(x)]
        with atomic_write(out_dir / "metrics.csv") as tmp:
            tmp.write_text("".join(kept) if len(kept) > 1 else "")
        if len(kept) == 1:
            (out_dir / "metrics.csv").unlink()
    if earlier.resolve() != out_dir.resolve() and (earlier / "tb").is_dir():
        (out_dir / "tb").mkdir(exist_ok=True)
        for f in sorted((earlier / "tb").glob("events.*")):
            shutil.copy2(f, out_dir / "tb" / f.name)
    write_json_atomic(
        out_dir / "resumed_from.json", {"run": str(earlier), "checkpoint": str(resume), "start_epoch": start_epoch}
    )
    return (
        f"resumed from {earlier} at epoch {start_epoch}: metrics.csv and tb/ in {out_dir} continue that run's "
        f"history (epochs 1-{start_epoch - 1} copied; the earlier folder is unchanged)"
    )
