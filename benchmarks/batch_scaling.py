"""Per-case time and memory of an archive review, 1 input against N (they stay flat: each input is its own job).

python benchmarks/batch_scaling.py [--sizes 1 20] [--jobs 2] [--input samples/clinicdb_seq6.mp4] [--out DIR]

For each size N: N copies of the input (default the bundled clip: 23 frames, 384x288) in a folder, reviewed by
`python infer.py -m hydra/launcher=submitit_local inputs=FOLDER out_root=ARCHIVE` with --jobs inputs at a time
(hydra.sweeper.max_batch_size), then the same command again (every case skipped: resume). Prints, per size, the
sweep's wall time, each case's wall time (case.json's wall_s: from the job's start on the case to its index rebuild,
model load included; the process start before it is not) and each job's peak resident memory (case.json's
peak_rss_mb: the job process's ru_maxrss), median and max, the sweep process's own peak (VmHWM, polled) and the
rerun's wall time. Writes into --out (default outputs/batch_scaling/, emptied first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vm_hwm_mb(pid: int) -> float | None:
    """A live process's peak resident memory (Linux /proc VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sweep(*, folder: Path, archive: Path, logs: Path, jobs: int) -> tuple[float, float, str]:
    """Run one sweep; returns its wall time, the sweep process's peak RSS (MB) and its summary line."""
    cmd = [
        sys.executable,
        "infer.py",
        "-m",
        "hydra/launcher=submitit_local",
        f"inputs={folder}",
        f"out_root={archive}",
        f"hydra.sweep.dir={logs}",
        f"hydra.sweeper.max_batch_size={jobs}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
        time.sleep(0.2)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the sweep failed ({proc.returncode}):\n{err[-3000:]}")
    line = next((x for x in out.splitlines() if x.startswith("batch:")), "")
    return wall, peak, line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--jobs", type=int, default=2, help="inputs reviewed at a time (hydra.sweeper.max_batch_size)")
    ap.add_argument("--input", type=Path, default=ROOT / "samples" / "clinicdb_seq6.mp4")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "batch_scaling")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    rows = []
    for n in a.sizes:
        folder = a.out / f"inputs_{n}"
        folder.mkdir(parents=True)
        for k in range(n):
            shutil.copy(a.input, folder / f"case{k:03d}{a.input.suffix}")
        archive = a.out / f"archive_{n}"
        wall, parent, line = sweep(folder=folder, archive=archive, logs=a.out / f"sweep_{n}", jobs=a.jobs)
        print(line, flush=True)
        records = [json.loads(p.read_text()) for p in sorted(archive.glob("*/case.json"))]
        assert len(records) == n and all(r["status"] == "done" for r in records), "not every case was reviewed"
        walls = [r["wall_s"] for r in records]
        rss = [r["peak_rss_mb"] for r in records]
        rerun, _, line = sweep(folder=folder, archive=archive, logs=a.out / f"sweep_{n}_rerun", jobs=a.jobs)
        print(line, flush=True)
        rows.append((n, wall, statistics.median(walls), max(walls), statistics.median(rss), max(rss), parent, rerun))
    print(
        f"\n{os.cpu_count()} CPU cores, {a.jobs} inputs at a time, input {a.input.name}\n"
        "| inputs | sweep wall s | per case s: median / max | per job peak RSS MB: median / max "
        "| sweep process peak RSS MB | rerun (all skipped) s |\n| --- | --- | --- | --- | --- | --- |"
    )
    for n, wall, wmed, wmax, rmed, rmax, parent, rerun in rows:
        print(f"| {n} | {wall:.1f} | {wmed:.2f} / {wmax:.2f} | {rmed:.0f} / {rmax:.0f} | {parent:.0f} | {rerun:.1f} |")


if __name__ == "__main__":
    main()
