"""The review app (python -m review.serve) without a browser: the token on every request, CSRF and origin checks,
validation of every field, optimistic locking between two users, the audit trail, sign-off and reopening, files
confined to their case, blinding, logs without patient data, and the export that data.check accepts.
(Over 350 lines on purpose: the app's guards are tested together, as an attacker would try them.)"""

from __future__ import annotations

import csv
import logging
import re

import numpy as np
import pytest
from starlette.testclient import TestClient

from data.io import read_image, read_mask
from review.app import store
from review.app.security import Sessions, allowed_hosts
from review.app.store import open_store
from review.app.web import create_app
from review.serve import main
from tests.archive_cases import CLIP, FORMULA, HOSTILE, copy_case, reviewed_case

TOKEN = "test-token-" + "x" * 30
COVARIATES = ["prior_radiotherapy", "weeks_since_rt", "dose_gy", "distance_av_cm", "prior_attempt", "lesion_size_mm"]
HEADS = ["fibrosis=F0,F1,F2", "lift=adequate,partial,non-lifting"]


@pytest.fixture()
def archive(tmp_path_factory, tmp_path):
    real = reviewed_case(tmp_path_factory)
    root = tmp_path / "archive"
    root.mkdir()
    copy_case(real, root / "case-a")
    copy_case(real, root / "case-b")
    copy_case(real, root / HOSTILE)
    copy_case(real, root / FORMULA)
    copy_case(real, root / "from-source", original=False, source=str(CLIP))  # frames from the input video
    copy_case(real, root / "no-frames", original=False, source="/nowhere/clip.mp4")
    return root


@pytest.fixture()
def app(archive, tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'outcomes.sqlite'}")
    return create_app(archive, engine=engine, token=TOKEN, state=tmp_path / "state")


def engine_of(app):
    return app.state.context.engine


def sign_in(app, user: str) -> TestClient:
    c = TestClient(app, follow_redirects=False)
    r = c.post("/login", data={"token": TOKEN, "user": user})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return c


def form_state(c: TestClient, case: str) -> dict[str, str]:
    """The hidden fields of a case's form as the page gives them (csrf, revision)."""
    from urllib.parse import quote

    html = c.get(f"/case/{quote(case, safe='')}").text
    form = html[html.index('id="outcome"') :]
    return dict(re.findall(r'<input type="hidden" name="(csrf|revision)" value="([^"]*)">', form)[:2])


def post_case(c: TestClient, case: str, state: dict[str, str], **values) -> object:
    from urllib.parse import quote

    return c.post(f"/case/{quote(case, safe='')}", data=state | values)


def test_every_request_needs_the_token(app, archive):
    anon = TestClient(app, follow_redirects=False)
    for path in (
        "/",
        "/case/case-a",
        "/case/case-a/files/report.html",
        "/thumb/case-a",
        "/export",
        "/export/cases.csv",
    ):
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    assert anon.post("/case/case-a", data={"lift": "partial"}).status_code == 401
    assert anon.post("/login", data={"token": "wrong", "user": "Eve"}).status_code == 401
    forged = Sessions("another install's token " + "y" * 20).issue("Eve")
    anon.cookies.set("endolift_session", forged)
    assert anon.get("/").status_code == 303
    anon.cookies.clear()
    # the printed URL: the token leaves the address bar at once; the name is asked next
    r = anon.get(f"/login?token={TOKEN}")
    assert r.status_code == 303 and r.headers["location"] == "/login" and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    assert anon.get("/").status_code == 303  # a session without a name reaches nothing but the sign-in page
    page = anon.get("/login").text
    assert 'name="token"' not in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)[1]
    assert anon.post("/login", data={"csrf": csrf, "user": "\x07"}).status_code == 400
    assert anon.post("/login", data={"csrf": csrf, "user": "Dr A"}).status_code == 303
    r = anon.get("/")
    assert r.status_code == 200 and "case-a" in r.text
    h = r.headers
    assert h["cache-control"] == "no-store" and h["x-content-type-options"] == "nosniff"
    script_src = h["content-security-policy"].split("script-src")[1].split(";")[0]
    assert script_src.startswith(" 'nonce-") and "unsafe" not in script_src
    nonce = re.search(r"'nonce-([^']+)'", h["content-security-policy"])[1]
    assert f'<script nonce="{nonce}">' in r.text


def test_forms_need_their_csrf_token_and_the_same_origin(app):
    a, b = sign_in(app, "Dr A"), sign_in(app, "Dr B")
    state = form_state(a, "case-a")
    assert post_case(a, "case-a", {"revision": "0"}, lift="partial").status_code == 403  # no token
    other = form_state(b, "case-a")
    assert post_case(a, "case-a", {"revision": "0", "csrf": other["csrf"]}, lift="partial").status_code == 403
    r = a.post("/case/case-a", data=state | {"lift": "partial"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert store.get(engine_of(app), "case-a") is None
    assert a.post("/logout", data={}).status_code == 403
    # bound to localhost, the app answers only requests addressed to localhost (no DNS rebinding)
    guarded = create_app(
        app.state.context.root,
        engine=engine_of(app),
        token=TOKEN,
        state=app.state.context.state,
        hosts=allowed_hosts("127.0.0.1", 8765),
    )
    c = TestClient(guarded, base_url="http://127.0.0.1:8765", follow_redirects=False)
    assert c.get("/login").status_code == 200
    assert c.get("/login", headers={"host": "evil.example:8765"}).status_code == 421


def test_every_field_is_validated(app):
    a = sign_in(app, "Dr A")
    state = form_state(a, "case-a")
    bad = {
        "lift": "lifting",
        "fibrosis": "F3",
        "prior_radiotherapy": "maybe",
        "weeks_since_rt": "ten",
        "dose_gy": "500",
        "distance_av_cm": "-1",
        "prior_attempt": "1",
        "lesion_size_mm": "nan",
        "patient": "John Smith",
        "centre": "../x",
        "note": "x" * 2001,
    }
    r = post_case(a, "case-a", state, **bad, action="save")
    assert r.status_code == 400 and "Not saved: 11 field(s) to correct." in r.text
    for name in bad:
        assert f'class="field invalid" id="field-{name}"' in r.text
    assert r.text.count('class="err"') == 11 and "John Smith" in r.text  # what was typed is kept, escaped
    assert store.get(engine_of(app), "case-a") is None
    values, errors = store.validate({"prior_radiotherapy": "no", "weeks_since_rt": "4", "dose_gy": "45"})
    assert set(errors) == {"weeks_since_rt", "dose_gy"}
    values, errors = store.validate({"weeks_since_rt": "12,5", "lesion_size_mm": " 30 ", "patient": "P-001"})
    assert not errors and values["weeks_since_rt"] == 12.5 and values["lesion_size_mm"] == 30.0
    _, errors = store.validate({"note": "fine"}, sign_off=True)
    assert set(errors) == {"lift", "fibrosis"}  # nothing to sign off


def test_two_users_editing_one_case_lose_nothing(app):
    a, b = sign_in(app, "Dr A"), sign_in(app, "Dr B")
    sa, sb = form_state(a, "case-b"), form_state(b, "case-b")  # both open the empty form
    assert sa["revision"] == sb["revision"] == "0"
    r = post_case(a, "case-b", sa, lift="partial", lesion_size_mm="25", action="save")
    assert r.status_code == 303 and r.headers["location"] == "/case/case-b?saved=1"
    r = post_case(b, "case-b", sb, lift="non-lifting", fibrosis="F2", action="save")
    assert r.status_code == 409  # B's form was read before A saved: nothing of B's is written over A's ...
    assert 'id="conflict" data-by="Dr A"' in r.text
    assert "<tr><td>Lift after submucosal injection</td><td>partial</td><td>non-lifting</td></tr>" in r.text
    assert 'value="non-lifting" checked' in r.text  # ... and B's values wait in the form, with A's revision
    assert '<input type="hidden" name="revision" value="1">' in r.text
    rec = store.get(engine_of(app), "case-b")
    assert (rec["lift"], rec["fibrosis"], rec["revision"]) == ("partial", None, 1)
    # B saves again, knowingly: B's values replace A's, and the audit keeps both
    sb["revision"] = "1"
    r = post_case(b, "case-b", sb, lift="non-lifting", fibrosis="F2", lesion_size_mm="25", action="save")
    assert r.status_code == 303
    rec = store.get(engine_of(app), "case-b")
    assert (rec["lift"], rec["fibrosis"], rec["revision"], rec["updated_by"]) == ("non-lifting", "F2", 2, "Dr B")
    trail = [(h["by"], h["field"], h["old"], h["new"]) for h in reversed(store.history(engine_of(app), "case-b"))]
    assert trail == [
        ("Dr A", "lift", None, "partial"),
        ("Dr A", "lesion_size_mm", None, "25"),
        ("Dr B", "lift", "partial", "non-lifting"),
        ("Dr B", "fibrosis", None, "F2"),
    ]
    page = a.get("/case/case-b").text
    assert "partial" in page and "non-lifting" in page and "Dr B" in page  # the history is on the page


def test_sign_off_locks_and_reopening_is_audited(app):
    a = sign_in(app, "Dr A")
    st = form_state(a, "case-a")
    assert post_case(a, "case-a", st, fibrosis="F1", action="signoff").headers["location"] == "/case/case-a?saved=2"
    page = a.get("/case/case-a?saved=2").text
    assert 'id="signed"' in page and "<fieldset disabled>" in page and "Signed off." in page
    st = form_state(a, "case-a")
    r = post_case(a, "case-a", st, fibrosis="F2", action="save")
    assert r.status_code == 409 and "signed off: reopen it" in r.text
    assert store.get(engine_of(app), "case-a")["fibrosis"] == "F1"
    assert a.post("/case/case-a/reopen", data=st).status_code == 400  # a reason is required
    assert a.post("/case/case-a/reopen", data=st | {"reason": "grade misread"}).status_code == 303
    rec = store.get(engine_of(app), "case-a")
    assert rec["signed_off_at"] is None and rec["fibrosis"] == "F1" and rec["revision"] == 2
    last = store.history(engine_of(app), "case-a")[0]
    assert (last["field"], last["old"], last["new"], last["by"]) == ("sign-off", "signed off", "grade misread", "Dr A")


def test_files_are_served_from_inside_their_case_only(app, archive):
    a = sign_in(app, "Dr A")
    r = a.get("/case/case-a/files/report.html")
    csp = r.headers["content-security-policy"]
    script_src = csp.split("script-src")[1].split(";")[0]
    assert r.status_code == 200 and script_src.startswith(" 'sha256-") and "unsafe" not in script_src
    assert a.get("/case/case-a/files/clinicdb_seq6_overlay.mp4").headers["content-type"] == "video/mp4"
    part = a.get("/case/case-a/files/clinicdb_seq6_overlay.mp4", headers={"range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100  # the report's video can seek
    for path in (
        "/case/case-a/files/predictions.jsonl",
        "/case/case-a/files/config.yaml",
        "/case/case-a/files/..%2F..%2Foutcomes.sqlite",
        "/case/case-a/files/../case-b/report.html",
        "/case/..%2Farchive/files/report.html",
        "/case/logs",
        "/case/nowhere",
    ):
        assert a.get(path).status_code == 404, path
    (archive / "case-a" / "keyframes" / "link.jpg").symlink_to(archive.parent / "outcomes.sqlite")
    assert a.get("/case/case-a/files/keyframes/link.jpg").status_code == 404
    # a hostile case name: its page, report and thumbnail work, the name is text
    q = "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"
    page = a.get(f"/case/{q}")
    assert (
        page.status_code == 200 and "<img src=x" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    )
    assert f'action="/case/{q}"' in page.text
    assert a.get(f"/case/{q}/files/report.html").status_code == 200
    assert a.get(f"/thumb/{q}").headers["content-type"] == "image/jpeg"
    assert f'href="/case/{q}"' in a.get("/").text


def test_blind_mode_hides_the_model(archive, tmp_path):
    blind = create_app(
        archive,
        engine=open_store(f"sqlite:///{tmp_path / 'b.sqlite'}"),
        token=TOKEN,
        state=tmp_path / "s",
        blind=True,
    )
    a = sign_in(blind, "Dr A")
    page = a.get("/case/case-a").text
    assert "small_sessile" not in page and "report.html" not in page and "keyframes" not in page
    assert '<video controls muted preload="metadata" src="/case/case-a/files/clinicdb_seq6_original.mp4">' in page
    assert a.get("/case/case-a/files/report.html").status_code == 404
    assert a.get("/case/case-a/files/clinicdb_seq6_original.mp4").status_code == 200
    assert a.get("/thumb/case-a").status_code == 404
    assert "small_sessile" not in a.get("/").text


def test_errors_are_logged_without_patient_data(app, caplog, monkeypatch):
    a = sign_in(app, "Dr A")

    def broken(engine, case_id):
        raise ValueError(f"cannot read {case_id} of patient DOE JOHN")

    monkeypatch.setattr(store, "get", broken)
    with caplog.at_level(logging.ERROR, logger="endolift.review"):
        r = a.get("/case/case-a")
    assert r.status_code == 500 and "DOE" not in r.text and "case-a" not in r.text
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "internal error: ValueError at test_serve.py:" in logged
    assert "DOE" not in logged and "case-a" not in logged


def sign_off(c: TestClient, case: str, **values) -> None:
    r = post_case(c, case, form_state(c, case), **values, action="signoff")
    assert r.status_code == 303, r.text[-2000:]


def test_export_is_what_data_check_and_train_read(app, archive, tmp_path, capsys):
    from data.check import main as check

    a = sign_in(app, "Dr A")
    sign_off(a, "case-a", lift="non-lifting", fibrosis="F2", prior_radiotherapy="yes", weeks_since_rt="30",
             dose_gy="50,4", distance_av_cm="5", prior_attempt="no", lesion_size_mm="35", patient="P001",
             centre="site-1", note="patient DOE JOHN, bled")  # fmt: skip
    sign_off(a, HOSTILE, lift="adequate", fibrosis="F0", prior_radiotherapy="no", patient="P002")
    sign_off(a, FORMULA, lift="partial", patient="P003")
    sign_off(a, "from-source", fibrosis="F1", patient="P001")  # a second resection of patient P001
    sign_off(a, "no-frames", lift="adequate", fibrosis="F0")
    post_case(a, "case-b", form_state(a, "case-b"), lift="partial", action="save")  # a draft: not exported
    url = f"sqlite:///{tmp_path / 'outcomes.sqlite'}"
    out = tmp_path / "export" / "cases.csv"
    assert main(["export", str(archive), "--out", str(out), "--db", url]) == 0
    printed = capsys.readouterr()
    assert "5 case(s), 12 frame(s)" in printed.out and "1 case(s) have no frames" in printed.err
    assert "no-frames" not in printed.out + printed.err  # case names go to the warnings file only
    with out.open(newline="") as f:
        cases = {r["group"]: r for r in csv.DictReader(f)}
    assert list(next(iter(cases.values()))) == ["group", "patient", "centre", "lift", "fibrosis", *COVARIATES]
    assert set(cases) == {"case-a", HOSTILE, "'" + FORMULA, "from-source", "no-frames"}  # signed off only
    assert cases["case-a"] == {
        "group": "case-a",
        "patient": "P001",
        "centre": "site-1",
        "lift": "non-lifting",
        "fibrosis": "F2",
        "prior_radiotherapy": "yes",
        "weeks_since_rt": "30",
        "dose_gy": "50.4",
        "distance_av_cm": "5",
        "prior_attempt": "no",
        "lesion_size_mm": "35",
    }
    assert "DOE" not in out.read_text() + (out.parent / "frames.csv").read_text()  # the note stays in the app
    assert "no-frames: no clean frames" in (out.parent / "export_warnings.txt").read_text()
    # the frames are clean frames (no overlay drawn in) with the model's masks at their size
    with (out.parent / "frames.csv").open(newline="") as f:
        frames = list(csv.DictReader(f))
    assert {r["group"] for r in frames} == {"case-a", HOSTILE, "'" + FORMULA, "from-source"}
    from data.video import read_frames

    source = {f.index: f.image for f in read_frames(CLIP)}
    for r in frames:
        image = read_image(out.parent / r["image"])
        assert read_mask(out.parent / r["mask"]).shape == image.shape[:2]
        index = int(r["image"].rsplit("_", 1)[1].split(".")[0])
        keyframe = read_image(archive / "case-a" / "keyframes" / r["image"].rsplit("/", 1)[1].replace(".png", ".jpg"))
        clean = np.abs(image.astype(int) - source[index]).mean()
        drawn = np.abs(keyframe.astype(int) - source[index]).mean()
        assert clean < 4 and drawn > clean + 2, (r["image"], clean, drawn)
    # data.check accepts the export as it stands
    code = check(["--manifest", str(out.parent / "frames.csv"), "--cases", "cases.csv", "--heads", *HEADS,
                  "--covariates", *COVARIATES])  # fmt: skip
    report = capsys.readouterr()
    assert code == 0, report.err
    assert "records: 12" in report.out and "groups: 4" in report.out and "patients: 3" in report.out
    # drafts on request; a second export reuses the frames already written
    before = (out.parent / "frames" / "case-a").stat().st_mtime_ns
    assert main(["export", str(archive), "--out", str(out), "--db", url, "--include-drafts"]) == 0
    assert "6 case(s), 15 frame(s)" in capsys.readouterr().out
    assert (out.parent / "frames" / "case-a").stat().st_mtime_ns == before


def test_command_line_refuses_what_it_should(archive, tmp_path, capsys):
    assert main([str(archive), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["export", str(archive), "--out", str(tmp_path / "c.csv")]) == 2
    assert "no outcomes recorded" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'o.sqlite'}"
    assert main(["export", str(archive), "--out", str(tmp_path / "c.txt"), "--db", url]) == 2
    assert main(["export", str(archive / "case-a"), "--out", str(tmp_path / "c.csv"), "--db", url]) == 2
    assert main(["export", str(archive), "--out", str(tmp_path / "c.csv"), "--db", "nonsense://"]) == 2


def test_the_command_serves_on_localhost_and_logs_no_case(archive, tmp_path):
    """python -m review.serve as a user starts it: the printed URL signs in; stderr names no case and no token."""
    import subprocess
    import sys
    from http.cookiejar import CookieJar
    from urllib.parse import urlencode
    from urllib.request import HTTPCookieProcessor, ProxyHandler, build_opener

    from tests.conftest import ROOT

    cmd = [sys.executable, "-m", "review.serve", str(archive), "--port", "0", "--state", str(tmp_path / "st")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        assert "6 case folder(s)" in lines[0] and "outcomes.sqlite" in lines[1], lines
        url = re.search(r"http://127\.0\.0\.1:\d+/login\?token=\S+", lines[2])[0]
        token = url.split("token=")[1]
        assert (tmp_path / "st" / "token").read_text().strip() == token
        assert (tmp_path / "st" / "token").stat().st_mode & 0o077 == 0  # the owner's only
        web = build_opener(ProxyHandler({}), HTTPCookieProcessor(CookieJar()))  # no proxy for localhost
        page = web.open(url, timeout=30).read().decode()  # redirected to the name form
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)[1]
        base = url.split("/login")[0]
        index = web.open(base + "/login", urlencode({"csrf": csrf, "user": "Dr A"}).encode(), timeout=30)
        html = index.read().decode()
        assert index.url == base + "/" and "case-a" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
        web.open(base + "/case/case-a", timeout=30).read()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "case-a" not in out + err and "onerror" not in out + err and token not in err, err
