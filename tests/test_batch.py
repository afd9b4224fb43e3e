"""Reviewing an archive: infer.py -m through Hydra's submitit launcher, one case folder per
input, resume by content hash + model + settings, failed inputs listed without stopping the others, manifests.
(Over 350 lines on purpose: the batch's contract end to end, its resume rules beside the runs that exercise them.)"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
import shutil
import threading
from pathlib import Path

import cv2
import pytest
import yaml

from core.errors import UserError
from review import batch, batch_inputs, case_ids, cases
from tests.conftest import ROOT, run_script

SAMPLES = sorted((ROOT / "samples" / "images").glob("*.jpg"))
CLIP = ROOT / "samples" / "clinicdb_seq6.mp4"
CHECKPOINT = ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"  # infer.py's default, wherever the tests run from


def _jobs(sweep: Path) -> list[dict]:
    """The outcomes the jobs of a sweep left, by job number."""
    out = []
    for p in sorted(sweep.glob(f"*/{batch.OUTCOME}"), key=lambda q: int(q.parent.name)):
        out += json.loads(p.read_text())
    return out


def _index_rows(root: Path) -> dict[str, dict]:
    with (root / "cases_summary.csv").open(newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def _mtime(p: Path) -> int:
    return p.stat().st_mtime_ns


# --- end to end: submitit_local ----------------------------------------------------------------------------------


def test_submitit_local_two_inputs_two_jobs_then_resume_skips_and_redoes_a_changed_input(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    a, b = shutil.copy(SAMPLES[0], src / "a.jpg"), shutil.copy(SAMPLES[1], src / "b.jpg")
    root = tmp_path / "archive"

    def sweep(name: str):
        return run_script(
            "infer.py",
            "-m",
            "hydra/launcher=submitit_local",
            f"input={a},{b}",
            f"out_root={root}",
            f"hydra.sweep.dir={tmp_path / name}",
            timeout=240,
        )

    p = sweep("s1")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "batch: 2 inputs" in p.stdout and "2 reviewed, 0 skipped" in p.stdout
    # two submitit jobs (each its own process and log folder), one case folder each
    logs = [d for d in (tmp_path / "s1" / ".submitit").iterdir() if any(d.glob("*_log.out"))]
    assert len(logs) == 2
    assert [j["status"] for j in _jobs(tmp_path / "s1")] == ["done", "done"]
    for case, src_file in (("a", a), ("b", b)):
        folder = root / case
        rec = json.loads((folder / "case.json").read_text())
        assert rec["status"] == "done" and rec["input"] == str(src_file) and len(rec["sha256"]) == 64
        # the default profile's model: the shipped checkpoint and its ensemble member
        shipped = [ROOT / "checkpoints" / n for n in ("endolift_polyp_unet_mnv2", "endolift_polyp_unet_mnv2_domain")]
        assert rec["save_id"] == "+".join(cases.model_save_id(p) for p in shipped)
        assert (folder / "summary.json").is_file() and (folder / "masks" / f"{case}.png").is_file()
        assert cases.listing_complete(folder)
        # config.yaml names this case's input and id: the command that redoes this one case
        first = (folder / "config.yaml").read_text().splitlines()[0]
        assert f"input={src_file}" in first and f"case={case}" in first and "," not in first.split("input=")[1]
    rows = _index_rows(root)
    assert {k: r["status"] for k, r in rows.items()} == {"a": "done", "b": "done"}
    assert 'href="a/report.html"' in (root / "index.html").read_text()
    assert not (root / case_ids.FAILURES).exists()
    before = {c: _mtime(root / c / "summary.json") for c in ("a", "b")}

    p = sweep("s2")  # nothing changed: both skipped, nothing rewritten
    assert p.returncode == 0, p.stderr[-3000:]
    assert "0 reviewed, 2 skipped" in p.stdout
    assert [j["status"] for j in _jobs(tmp_path / "s2")] == ["skipped", "skipped"]
    assert {c: _mtime(root / c / "summary.json") for c in ("a", "b")} == before

    os.utime(a)  # touched, same content: still the same input
    image = cv2.imread(str(b))
    image[:8, :8] = 0
    cv2.imwrite(str(b), image)  # new content: redone
    p = sweep("s3")
    assert p.returncode == 0, p.stderr[-3000:]
    assert [(j["case"], j["status"]) for j in _jobs(tmp_path / "s3")] == [("a", "skipped"), ("b", "done")]
    assert _mtime(root / "a" / "summary.json") == before["a"] and _mtime(root / "b" / "summary.json") > before["b"]
    assert json.loads((root / "b" / "case.json").read_text())["sha256"] == cases.content_sha256(Path(b))


def sweep_in_process(inputs: list[Path], sweep: Path, *overrides: str) -> tuple[int, str]:
    """What ``infer.py -m input=A,B OVERRIDES hydra.sweep.dir=SWEEP`` does with Hydra's basic launcher (the jobs one
    after the other in one process), called here: one review.batch.review_archive job per input, its outcome in
    SWEEP/<job number>/, then BatchCallback's summary. Returns (infer.py's exit code, what it printed)."""
    from omegaconf import OmegaConf

    from tests.test_infer import infer_settings

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        for k, path in enumerate(inputs):
            job = (f"input={path}", *overrides)
            code = batch.review_archive(infer_settings(*job), overrides=job, multirun=True, job_dir=sweep / str(k))
            assert code == 0  # a job always returns: its outcome is the sweep's
        out_root = dict(o.split("=", 1) for o in overrides)["out_root"]
        config = OmegaConf.create({"out_root": out_root, "hydra": {"sweep": {"dir": str(sweep)}}})
        try:
            batch.BatchCallback().on_multirun_end(config)
            code = 0
        except SystemExit as e:
            code = e.code
    return code, buf.getvalue()


def test_a_failed_input_is_listed_while_the_other_completes_and_a_fixed_one_is_redone(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = shutil.copy(SAMPLES[0], src / "good.jpg")
    bad = src / "bad.jpg"
    bad.write_bytes(b"not a picture")
    root = tmp_path / "archive"

    def sweep(name: str) -> tuple[int, str]:
        return sweep_in_process([good, bad], tmp_path / name, f"out_root={root}", f"checkpoint={CHECKPOINT}")

    code, stdout = sweep("s1")
    assert code == 2
    assert "1 reviewed, 0 skipped (complete), 1 failed" in stdout and case_ids.FAILURES in stdout
    assert (root / "good" / "summary.json").is_file() and not (root / "bad" / "summary.json").exists()
    (failure,) = [json.loads(x) for x in (root / case_ids.FAILURES).read_text().splitlines()]
    assert failure["case"] == "bad" and failure["input"] == str(bad) and "cannot decode image" in failure["error"]
    assert "cannot decode image" in (root / "bad" / "errors.jsonl").read_text()
    assert json.loads((root / "bad" / "case.json").read_text())["status"] == "failed"
    rows = _index_rows(root)  # the index, rebuilt after each case: the failed one is incomplete
    assert rows["good"]["status"] == "done" and rows["bad"]["status"] == "incomplete"

    shutil.copy(SAMPLES[1], bad)  # fixed: redone, no longer listed; the good one is skipped
    code, _ = sweep("s2")
    assert code == 0
    assert [(j["case"], j["status"]) for j in _jobs(tmp_path / "s2")] == [("good", "skipped"), ("bad", "done")]
    assert not (root / case_ids.FAILURES).exists() and not (root / "bad" / "errors.jsonl").exists()
    assert _index_rows(root)["bad"]["status"] == "done"


def test_a_manifest_gives_each_input_its_case_id(tmp_path):
    data = tmp_path / "data"
    (data / "frames").mkdir(parents=True)
    shutil.copy(SAMPLES[0], data / "Smith, John.jpg")
    for k, s in enumerate(SAMPLES[1:3]):
        shutil.copy(s, data / "frames" / f"f{k}.jpg")
    manifest = data / "cases.csv"
    shutil.copy(CLIP, data / "clip.mp4")
    manifest.write_text('input,case,notes\n"Smith, John.jpg",P001,first visit\nframes,P002,\nclip.mp4,P003,\n')
    root, sweep = tmp_path / "archive", tmp_path / "sweep"
    p = run_script("infer.py", "-m", f"inputs={manifest}", f"out_root={root}", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert all(f"inputs_row={k}" in p.stdout for k in range(3))  # one job per row of the frozen list
    cases = ["P001", "P002", "P003"]
    assert sorted(q.name for q in root.iterdir() if q.is_dir() and not q.name.startswith(".")) == cases
    frozen = list(csv.DictReader((sweep / batch.FROZEN).open()))
    assert [r["case"] for r in frozen] == cases and Path(frozen[0]["input"]).is_absolute()
    assert json.loads((root / "P002" / "summary.json").read_text())["frames"] == 2  # a folder of images: one case
    # the case's config.yaml names its own input (what the review app's export reads), not the manifest
    cfg = (root / "P001" / "config.yaml").read_text()
    parsed = yaml.safe_load(cfg)  # (YAML folds a long path over lines: compare values, not text)
    assert parsed["input"] == str(data / "Smith, John.jpg") and parsed["inputs"] is None
    assert set(_index_rows(root)) == set(cases)
    # an archive keeps the original video by default (the review app's blind mode and clean-frame export)
    assert (root / "P003" / "clip_original.mp4").is_file() and (root / "P003" / "report.html").is_file()
    assert "original_video: true" in (root / "P003" / "config.yaml").read_text()
    listed = run_script("-m", "review.batch", "list", str(manifest))
    assert listed.returncode == 0 and listed.stdout.splitlines()[0] == f"P001\t{data / 'Smith, John.jpg'}"


def test_anonymised_names_leave_no_input_name_in_the_archive(tmp_path, monkeypatch, capsys):
    """One process, several inputs (no -m): each a case named by its pseudonym; no file of the archive names one."""
    src = tmp_path / "Doe_Jane"
    src.mkdir()
    good = shutil.copy(SAMPLES[0], src / "Doe_Jane_1987.jpg")
    (src / "Roe_Rick.jpg").write_bytes(b"not a picture")
    root = tmp_path / "archive"
    monkeypatch.setenv("ENDOLIFT_NAME_KEY", "test-key")
    args = (
        f"input=[{good},{src / 'Roe_Rick.jpg'}]",
        f"out_root={root}",
        "review.anonymise_names=true",
        f"checkpoint={CHECKPOINT}",
    )

    def archive_in_process() -> tuple[int, str]:  # infer.py ARGS (no -m), called here: (exit code, its stdout)
        from tests.test_infer import infer_settings

        code = batch.review_archive(infer_settings(*args), overrides=args, multirun=False, job_dir=None)
        return code, capsys.readouterr().out

    code, stdout = archive_in_process()
    assert code == 2 and "1 reviewed, 0 skipped (complete), 1 failed" in stdout
    cases = sorted(q.name for q in root.iterdir() if q.is_dir() and not q.name.startswith("."))
    assert len(cases) == 2 and all(c.startswith("case-") for c in cases)
    for f in root.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".html", ".csv"):
            text = f.read_text()
            assert "Doe" not in text and "Roe" not in text and str(src) not in text, f
    code, stdout = archive_in_process()  # the same names again: the good one skipped
    assert "0 reviewed, 1 skipped (complete), 1 failed" in stdout


def test_submitit_slurm_submits_one_array_with_partition_gpus_time_and_parallelism(tmp_path, monkeypatch):
    """The sbatch script submitit writes runs (SLURM's commands played by tests/fixtures/fake_slurm/)."""
    bin_dir = tmp_path / "bin"
    shutil.copytree(ROOT / "tests" / "fixtures" / "fake_slurm", bin_dir)
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "sbatch.sh"))
    root, sweep = tmp_path / "archive", tmp_path / "sweep"
    p = run_script(
        "infer.py",
        "-m",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=1",
        "hydra.launcher.timeout_min=30",
        "hydra.launcher.array_parallelism=8",
        f"input={SAMPLES[2]},{SAMPLES[3]}",
        f"out_root={root}",
        f"hydra.sweep.dir={sweep}",
        timeout=240,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "2 reviewed, 0 skipped" in p.stdout
    script = (tmp_path / "sbatch.sh").read_text()  # one array job for the whole sweep
    for line in ("--array=0-1%2", "--partition=gpu", "--gpus-per-node=1", "--time=30", "srun "):
        assert line in script
    assert {j["status"] for j in _jobs(sweep)} == {"done"} and len(_jobs(sweep)) == 2
    assert {k: r["status"] for k, r in _index_rows(root).items()} == {s.stem: "done" for s in SAMPLES[2:]}


def test_settings_are_checked_before_any_job_and_archives_need_out_root(tmp_path):
    p = run_script("infer.py", "-m", f"input={SAMPLES[0]},{SAMPLES[1]}", f"out_dir={tmp_path / 'o'}")
    assert p.returncode == 2 and "give out_root=DIR" in p.stderr
    p = run_script("infer.py", f"input={SAMPLES[0]}", "case=P1", f"out_dir={tmp_path / 'o'}")
    assert p.returncode == 2 and "give out_root=DIR too" in p.stderr
    sweep = tmp_path / "sweep"
    args = ["-m", f"input={SAMPLES[0]},{SAMPLES[1]}", f"out_root={tmp_path / 'a'}", f"hydra.sweep.dir={sweep}"]
    p = run_script("infer.py", *args, "review.threshold=2")
    assert p.returncode == 2 and "review.threshold=2 is invalid" in p.stderr and not any(sweep.glob("*/outcome.json"))
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "summary.json").write_text("{}")
    p = run_script("infer.py", "-m", f"input={SAMPLES[0]}", f"out_root={tmp_path / 'one'}")
    assert p.returncode == 2 and "holds one review's outputs" in p.stderr


# --- the parts --------------------------------------------------------------------------------------------------------


def test_derived_case_ids_are_path_safe():
    assert case_ids.derived_case_id(Path("/a/clip 1 (copy).mp4")) == "clip_1_copy_"
    assert case_ids.derived_case_id(Path("/a/.hidden.mp4")) == "hidden"
    assert case_ids.derived_case_id(Path("/a/Müller.mp4")) == "Müller"
    assert case_ids.derived_case_id(Path("/a/index.html.mp4")) == "index.html_case"
    assert case_ids.derived_case_id(Path("/a/frames.v2")) == "frames.v2"  # a folder keeps its whole name
    assert case_ids.derived_case_id(Path("/a/<script>.mp4")) == "_script_"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".x", "-x", "index.html", "a b", "x" * 101])
def test_given_case_ids_are_refused_unless_path_safe(bad):
    with pytest.raises(UserError, match="not usable as a folder name"):
        case_ids.check_case_id(bad, where="case")


def test_a_derived_id_stays_with_the_input_that_claimed_it(tmp_path):
    one, two = str(tmp_path / "x" / "clip.mp4"), str(tmp_path / "y" / "clip.mp4")
    assert case_ids.claim_case(tmp_path, base="clip", source=one) == "clip"
    assert case_ids.claim_case(tmp_path, base="clip", source=two) == "clip_2"
    assert case_ids.claim_case(tmp_path, base="clip", source=one) == "clip"  # later runs: the same folder
    assert case_ids.claim_case(tmp_path, base="clip", source=two) == "clip_2"
    (tmp_path / "other" / "masks").mkdir(parents=True)
    (tmp_path / "other" / "summary.json").write_text("{}")  # a plain infer.py run's folder: never taken
    assert case_ids.claim_case(tmp_path, base="other", source=one) == "other_2"


def test_parallel_claims_never_share_a_folder(tmp_path):
    got: list[str] = []
    sources = [f"/in/{k}/clip.mp4" for k in range(8)]
    threads = [
        threading.Thread(target=lambda s=s: got.append(case_ids.claim_case(tmp_path, base="clip", source=s)))
        for s in sources
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(["clip"] + [f"clip_{k}" for k in range(2, 9)])
    assert {json.loads((tmp_path / c / "case.json").read_text())["source"] for c in got} == set(sources)


def test_manifest_problems_name_the_line(tmp_path):
    m = tmp_path / "m.csv"
    cases = {
        "case\nP1\n": "no input column",
        "input,case\n,P1\n": "line 2: the input is empty",
        "input,case\na.mp4,P1\nb.mp4,P1\n": "lines 2 and 3: case id P1 is given twice",
        "input,case\na.mp4,P1\na.mp4,P2\n": "lines 2 and 3: input a.mp4 is listed twice",
        "input,case\na.mp4,../P1\n": "line 2: case id '../P1' is not usable",
        "input,case\n": "lists no input",
    }
    for text, needle in cases.items():
        m.write_text(text)
        with pytest.raises(UserError, match=needle.replace("(", r"\(")):
            batch_inputs.read_manifest(m)
    m.write_bytes("\ufeffinput,case\nsub/a.mp4,\n/abs/b.mp4,P2\n".encode())  # Excel's BOM; relative to the manifest
    assert batch_inputs.read_manifest(m) == [
        batch_inputs.Item(tmp_path / "sub" / "a.mp4", None),
        batch_inputs.Item(Path("/abs/b.mp4"), "P2"),
    ]


def test_inputs_spec_a_folder_of_videos_a_glob_or_a_manifest(tmp_path):
    for name in ("b.mp4", "a.MOV", "note.txt", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "frames").mkdir()
    assert [i.input.name for i in batch_inputs.expand_inputs(str(tmp_path))] == ["a.MOV", "b.mp4"]
    assert [i.input.name for i in batch_inputs.expand_inputs(str(tmp_path / "*"))] == [
        "a.MOV",
        "b.mp4",
        "c.jpg",
        "frames",
    ]
    with pytest.raises(UserError, match="matches no video"):
        batch_inputs.expand_inputs(str(tmp_path / "*.avi"))
    with pytest.raises(UserError, match="no videos"):
        batch_inputs.expand_inputs(str(tmp_path / "frames"))
    with pytest.raises(UserError, match="not a folder, a glob"):
        batch_inputs.expand_inputs(str(tmp_path / "nothing"))


def _write_case(folder: Path, *, sha: str = "s", save_id: str = "m", settings: str = "d") -> None:
    (folder / "masks").mkdir(parents=True)
    (folder / "masks" / "x.png").write_bytes(b"x")
    (folder / "summary.json").write_text("{}")
    (folder / ".endolift-outputs.json").write_text(json.dumps({"files": ["masks/x.png", "summary.json"]}))
    rec = {"status": "done", "sha256": sha, "save_id": save_id, "settings": settings}
    (folder / "case.json").write_text(json.dumps(rec))


def test_a_case_is_complete_only_with_the_same_input_model_settings_and_every_listed_file(tmp_path):
    f = tmp_path / "c"
    _write_case(f)
    assert cases.is_complete(f, sha256="s", save_id="m", settings="d")
    assert not cases.is_complete(f, sha256="other", save_id="m", settings="d")
    assert not cases.is_complete(f, sha256="s", save_id="other", settings="d")
    assert not cases.is_complete(f, sha256="s", save_id="m", settings="other")
    assert not cases.is_complete(f, sha256=None, save_id="m", settings="d")  # the input is unreadable
    (f / ".endolift-outputs.journal").write_text("masks/y.png\n")  # a run was killed in this folder
    assert not cases.is_complete(f, sha256="s", save_id="m", settings="d")
    (f / ".endolift-outputs.journal").unlink()
    (f / "masks" / "x.png").unlink()  # a listed output is gone
    assert not cases.is_complete(f, sha256="s", save_id="m", settings="d")


def test_the_settings_digest_ignores_paths_and_speed_but_not_what_is_written():
    base = {"input": "a", "out_root": "r", "device": "cpu", "tta": False, "review": {"threshold": 0.5, "batch_size": 8}}
    d = cases.settings_digest(base)
    assert cases.settings_digest(base | {"input": "b", "out_root": "s", "device": "cuda", "resume": False}) == d
    assert cases.settings_digest(base | {"review": {"threshold": 0.5, "batch_size": 32}}) == d
    assert cases.settings_digest(base | {"review": {"threshold": 0.4, "batch_size": 8}}) != d
    assert cases.settings_digest(base | {"tta": True}) != d
    # which flips TTA averages counts only while TTA is on
    assert cases.settings_digest(base | {"tta_views": "hv"}) == d
    assert cases.settings_digest(base | {"tta": True, "tta_views": "hv"}) != cases.settings_digest(base | {"tta": True})


def test_content_hash_is_streamed_and_covers_a_folders_frame_names(tmp_path):
    import hashlib

    f = tmp_path / "v.mp4"
    f.write_bytes(os.urandom(3_000_000))
    assert cases.content_sha256(f, chunk=4096) == hashlib.sha256(f.read_bytes() + b"\0").hexdigest()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.png").write_bytes(b"a")
    h = cases.content_sha256(tmp_path / "d")
    (tmp_path / "d" / "1.png").rename(tmp_path / "d" / "2.png")
    assert cases.content_sha256(tmp_path / "d") != h


def _fail(root: str, k: int) -> None:
    cases.update_failures(Path(root), case=f"c{k}", failure={"case": f"c{k}", "error": "x"})


def test_the_failure_list_keeps_every_jobs_line_when_jobs_finish_together(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_fail, args=(str(tmp_path), k)) for k in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = [json.loads(x) for x in (tmp_path / case_ids.FAILURES).read_text().splitlines()]
    assert sorted(x["case"] for x in lines) == sorted(f"c{k}" for k in range(12))
    for k in range(12):  # each one fixed: its line goes, and the file with the last
        cases.update_failures(tmp_path, case=f"c{k}", failure=None)
    assert not (tmp_path / case_ids.FAILURES).exists()


def test_the_sweep_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert batch.sweep_arguments(["input=a.mp4", "out_dir=x"]) == ["input=a.mp4", "out_dir=x"]  # one run: unchanged
    with pytest.raises(UserError, match="give out_root"):
        batch.sweep_arguments(["-m", "input=a.mp4,b.mp4"])
    (tmp_path / "videos").mkdir()
    for name in ("b.mp4", "a.mp4"):
        (tmp_path / "videos" / name).write_bytes(b"x")
    argv = batch.sweep_arguments(
        ["-m", "hydra/launcher=submitit_local", "inputs=videos", "out_root=arch", "hydra.sweep.dir=sw"]
    )
    assert argv[-3:] == [
        f"inputs={tmp_path / 'sw' / 'inputs.csv'}",
        "inputs_row=range(0,2)",
        "hydra.sweeper.max_batch_size=2",
    ]
    assert "inputs=videos" not in argv
    assert [i.input.name for i in batch_inputs.read_manifest(tmp_path / "sw" / "inputs.csv")] == ["a.mp4", "b.mp4"]
    argv = batch.sweep_arguments(
        ["-m", "hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=4", "input=a", "out_root=arch"]
    )
    assert argv[-1].startswith("hydra.sweep.dir=multirun/infer/") and "hydra.sweeper.max_batch_size=2" not in argv
    with pytest.raises(UserError, match="either as input=a,b or as inputs=SPEC"):
        batch.sweep_arguments(["-m", "input=a", "inputs=videos", "out_root=arch"])
