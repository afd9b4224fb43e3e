"""The case index (python -m review.index): statuses of finished, running and failed cases, the fields of real
summaries, hostile names kept as text, a spreadsheet-safe CSV, and incremental rebuilds."""

from __future__ import annotations

import csv
import json
import os
import threading

import pytest

from review.case_rows import case_folders, read_case
from review.index import build_index, main, thumb_name
from tests.archive_cases import FORMULA, HOSTILE, copy_case, hand_made, reviewed_case
from tests.conftest import html_tags


@pytest.fixture()
def archive(tmp_path_factory, tmp_path):
    """Three real cases, a hostile-named and a formula-named one with sparse hand-made summaries, one still running,
    one that failed (no summary, an errors.jsonl), one damaged summary, and two folders that are not cases."""
    real = reviewed_case(tmp_path_factory)
    root = tmp_path / "archive"
    root.mkdir()
    for name in ("case-a", "case-b", "case-c"):
        copy_case(real, root / name)
    hand_made(root / HOSTILE, {"frames": 5, "heads": {"lift": {"estimate": None, "reason": "too few frames"}}})
    hand_made(root / FORMULA, {"frames": 40, "informative_frames": 2, "video": {"fps": 25, "duration": 1.6}})
    (root / "running").mkdir()
    (root / "running" / ".endolift.lock").write_text("12345")
    (root / "failed").mkdir()
    (root / "failed" / "errors.jsonl").write_text(json.dumps({"file": "x.mp4", "error": "cannot open video"}) + "\n")
    hand_made(root / "damaged", "{not json")
    (root / "logs").mkdir()  # no infer.py marker: not a case
    (root / ".submitit").mkdir()  # hidden: never a case
    (root / ".submitit" / "summary.json").write_text("{}")
    return root


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_index_lists_every_case_with_its_status_and_facts(archive):
    result = build_index(archive)
    assert result.counts == {"done": 5, "running": 1, "incomplete": 1, "unreadable": 1}
    rows = read_csv(archive / "cases_summary.csv")
    assert set(rows) == {"case-a", "case-b", "case-c", HOSTILE, "'" + FORMULA, "running", "failed", "damaged"}
    a = rows["case-a"]
    summary = json.loads((archive / "case-a" / "summary.json").read_text())
    assert a["status"] == "done" and a["kind"] == "video"
    assert float(a["duration_s"]) == summary["video"]["duration"] and int(a["frames"]) == summary["frames"]
    assert (
        int(a["segments"]) == len(summary["segments"]) and int(a["largest_px"]) == summary["largest_lesion"]["area_px"]
    )
    assert a["reliability"] == "good" and a["model"] == summary["model"]["name"]
    for head, est in summary["heads"].items():  # the validated heads' estimates, one column each
        assert a[head] == est["estimate"] and float(a[f"{head}_confidence"]) == est["confidence"]
    assert a["report"] == "case-a/report.html"
    # sparse summaries: what is missing stays empty, nothing is invented
    assert rows[HOSTILE]["reliability"] == "n/a" and rows[HOSTILE]["lift"] == "insufficient evidence"
    assert rows["'" + FORMULA]["reliability"] == "low" and rows["'" + FORMULA]["segments"] == ""
    assert rows["failed"]["status"] == "incomplete" and rows["running"]["status"] == "running"
    assert read_case(archive / "failed")["detail"] == "cannot open video"
    assert read_case(archive / "damaged")["status"] == "unreadable"
    # a thumbnail per finished case with a picture, named by digest
    for name in ("case-a", "case-b", "case-c"):
        assert (archive / ".index" / "thumbs" / thumb_name(name)).is_file()


def test_index_page_keeps_hostile_names_as_text(archive):
    build_index(archive)
    html = (archive / "index.html").read_text(encoding="utf-8")
    tags = html_tags(html)
    assert not [t for t, attrs in tags if "onerror" in attrs], "a case name became an element"
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    links = [attrs["href"] for t, attrs in tags if t == "a"]
    assert "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/" in links  # percent-encoded in the URL
    assert "case-a/report.html" in links
    thumbs = [attrs["src"] for t, attrs in tags if t == "img"]
    assert f".index/thumbs/{thumb_name('case-a')}" in thumbs
    assert html.count("<script>") == 1 and "onerror=" not in html.replace("onerror=alert(1)&gt;", "")


def test_index_rebuilds_only_what_changed(archive):
    first = build_index(archive)
    assert first.read == 5
    thumb = archive / ".index" / "thumbs" / thumb_name("case-a")
    made = thumb.stat().st_mtime_ns
    again = build_index(archive)
    assert again.read == 0 and thumb.stat().st_mtime_ns == made
    # two cases finish and one is rerun: only they are read
    (archive / "running" / ".endolift.lock").unlink()
    (archive / "running" / "summary.json").write_text(json.dumps({"frames": 3, "informative_frames": 3}))
    copy_case(archive / "case-a", archive / "late")
    summary = archive / "case-b" / "summary.json"
    data = json.loads(summary.read_text())
    data["frames_with_lesion"] = 3
    summary.write_text(json.dumps(data))
    os.utime(summary, ns=(made + 10**9, made + 10**9))
    third = build_index(archive)
    assert third.read == 3 and third.counts == {"done": 7, "incomplete": 1, "unreadable": 1}
    rows = read_csv(archive / "cases_summary.csv")
    assert rows["case-b"]["frames_with_lesion"] == "3" and "late" in rows
    assert rows["running"]["status"] == "done" and rows["running"]["reliability"] == "good"
    # a deleted case leaves the index
    import shutil

    shutil.rmtree(archive / "case-c")
    assert build_index(archive).read == 0
    assert "case-c" not in read_csv(archive / "cases_summary.csv")


def test_builds_at_once_all_land(archive):
    """Jobs that finish together may each rebuild the index: builds wait for each other, none is lost."""
    errors = []

    def build():
        try:
            build_index(archive)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(read_csv(archive / "cases_summary.csv")) == 8
    assert not list(archive.glob("*.partial-*"))


def test_command_prints_counts_only_and_refuses_a_single_case(archive, capsys, tmp_path_factory):
    assert main([str(archive)]) == 0
    out = capsys.readouterr().out
    assert "8 cases (5 done, 1 running, 1 incomplete, 1 unreadable" in out
    assert "case-a" not in out and HOSTILE not in out  # case names may identify patients: never printed
    assert main([str(archive / "nowhere")]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main([str(archive / "case-a")]) == 2
    assert "holds one case's outputs" in capsys.readouterr().err
    assert main([str(archive), "--watch", "0"]) == 2
    assert [p.name for p in case_folders(archive)][:2] == [HOSTILE, FORMULA]
