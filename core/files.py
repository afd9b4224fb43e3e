"""Writing outputs so that a crash, a kill or a second process never leaves a half-written or mixed-up folder:
atomic writes (a temporary name, renamed when complete), the run journal and list of each run's outputs, stale
partial files cleaned, and locks on an output folder (one writer at a time)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import UserError


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``NAME.partial-PID.EXT``, same suffix so writers that infer the format
    from it still work); rename it to ``path`` when the block succeeds, delete it when the block raises.

    Every output of the project goes through this, so a crash never leaves a half-written file under a final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid keeps two processes writing the same file (DDP ranks preparing one cache) from sharing a temp name
    tmp = path.with_name(f"{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    announce_output(path)
    tmp.replace(path)
    record_output(path)


RUN_OUTPUTS = ".endolift-outputs.json"  # in an output folder: the files the last run into it wrote
RUN_JOURNAL = ".endolift-outputs.journal"  # while a run writes: each output, listed before it is put in place


class _Recorder:
    """One recording_outputs() block: the files put in place, and optionally a journal in ``folder`` that names
    each file before it gets its final name (so a run killed at any point has listed every final file it left)."""

    def __init__(self, folder: Path | None) -> None:
        import threading

        self.written: set[Path] = set()
        self.folder = None if folder is None else Path(folder).absolute()
        self.lock = threading.Lock()
        self.journal = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            # unbuffered appends: a line is in the file (the kernel's page cache) once write() returns, which is
            # what survives a kill -9 of this process
            self.journal = open(self.folder / RUN_JOURNAL, "ab", buffering=0)  # noqa: SIM115 (closed by the block)

    def announce(self, path: Path) -> None:
        if self.journal is None or self.folder not in path.parents:
            return
        line = (str(path.relative_to(self.folder)) + "\n").encode("utf-8", "surrogateescape")
        with self.lock:
            self.journal.write(line)


_RECORDERS: list[_Recorder] = []  # the open recording_outputs() blocks (output threads add to them too)


def announce_output(path: str | Path) -> None:
    """Journal a file that is about to be put in place under its final name (before the rename)."""
    for r in _RECORDERS:
        r.announce(Path(path).absolute())


def record_output(path: str | Path) -> None:
    """Note a file that was just put in place, for every recording_outputs() block open in this process."""
    for r in _RECORDERS:
        r.written.add(Path(path).absolute())


@contextmanager
def recording_outputs(*, journal: str | Path | None = None) -> Iterator[set[Path]]:
    """Collect the absolute paths of every output file put in place (atomic_write, VideoWriter) inside the block.
    With ``journal`` (an output folder), each file inside it is also appended to ``RUN_JOURNAL`` there before it is
    renamed into place; forget_previous_run deletes what a journal lists, and list_run_outputs replaces the journal
    by the final listing when the run ends."""
    rec = _Recorder(None if journal is None else Path(journal))
    _RECORDERS.append(rec)
    try:
        yield rec.written
    finally:
        _RECORDERS.remove(rec)
        if rec.journal is not None:
            rec.journal.close()


def forget_previous_run(folder: str | Path) -> int:
    """Delete the files the previous run into ``folder`` listed in RUN_OUTPUTS (and folders they leave empty), so a
    new run never mixes with an older one's masks, videos or report. Only listed files inside ``folder`` are touched:
    nothing of the user's. Returns how many files were deleted."""
    import json

    folder = Path(folder).resolve()
    listing, journal = folder / RUN_OUTPUTS, folder / RUN_JOURNAL
    names: list[str] = []
    if listing.is_file():
        try:
            names = list(json.loads(listing.read_text())["files"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{listing} is unreadable: delete it, or choose another out_dir") from None
    if journal.is_file():  # a run that was killed (or is still being listed): every file it put in place
        names += [x for x in journal.read_bytes().decode("utf-8", "surrogateescape").splitlines() if x.strip()]
    if not listing.is_file() and not journal.is_file():
        return 0
    n, parents = 0, set()
    for name in names:
        p = (folder / str(name)).resolve()
        if folder not in p.parents or not p.is_file():
            continue  # outside the folder (a hand-edited listing) or already gone
        p.unlink()
        n += 1
        parents.update(q for q in p.parents if folder in q.parents)
    for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    listing.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    return n


def list_run_outputs(folder: str | Path, written: set[Path]) -> None:
    """Write RUN_OUTPUTS: the files of ``written`` inside ``folder``, relative to it (read by forget_previous_run)."""
    import json

    folder = Path(folder).absolute()
    names = sorted(str(p.relative_to(folder)) for p in written if folder in p.parents and p.is_file())
    with atomic_write(folder / RUN_OUTPUTS) as tmp:
        tmp.write_text(json.dumps({"files": names}, indent=1))
    (folder / RUN_JOURNAL).unlink(missing_ok=True)  # the listing now holds everything the journal named


def write_json_atomic(path: str | Path, value: Any) -> None:
    """One JSON document, written atomically (indented, UTF-8)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=str), encoding="utf-8")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object a line, written atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_csv_atomic(path: str | Path, rows: list[dict]) -> None:
    """Rows (dicts with the same keys) as a CSV with a header, written atomically."""
    import csv

    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_image_atomic(
    path: str | Path, array: np.ndarray, *, png_level: int | None = None, bilevel: bool = False
) -> None:
    """Write an image (format from the suffix: .png, .jpg) to a temporary name, then rename it into place.
    png_level: PNG compression 0 (fastest, largest) .. 9 (OpenCV's default is 3). bilevel: a 0/255 mask as a
    1-bit PNG (it reads back as the same 8-bit 0/255 image; about 7x faster to write at 1080p, 3x smaller)."""
    path = Path(path)
    if array.ndim == 3:
        array = array[:, :, ::-1]
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)] if png_level is not None and path.suffix == ".png" else []
    if bilevel and path.suffix == ".png":
        params += [cv2.IMWRITE_PNG_BILEVEL, 1]
    ok, buf = cv2.imencode(path.suffix, array, params)
    if not ok:
        raise RuntimeError(f"image encoding failed for {path}")
    with atomic_write(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_partials(folder: str | Path) -> int:
    """Delete ``*.partial-PID.*`` files under ``folder`` whose writing process no longer exists (left by a kill);
    return how many. Another live process's temporary files are left alone."""
    import re

    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.rglob("*.partial-*"):
        m = re.search(r"\.partial-(\d+)(\.|$)", p.name)
        if m and p.is_file() and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            n += 1
    return n


@contextmanager
def output_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder/.endolift.lock`` while writing into ``folder``: a second process that wants the same folder
    stops with a clear message instead of corrupting the first one's outputs. A lock left by a killed process is
    taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".endolift.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                other = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                other = 0
            if other and other != os.getpid() and _pid_alive(other):
                raise UserError(
                    f"another endolift process (pid {other}) is writing into {folder}: wait for it to "
                    "finish or choose another out_dir"
                ) from None
            lock.unlink(missing_ok=True)
    else:
        raise UserError(f"cannot lock output folder {folder} (remove {lock} if no endolift process is running)")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield folder
    finally:
        lock.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/lock`` exclusively (the folder is created): one process at a time in the block, across the
    jobs of a batch. Released when the file closes, also when the process dies."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
