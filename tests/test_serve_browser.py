"""A real browser uses the review app: headless Chromium (Debian package `chromium`, installed by .ci/run) against the
app served by uvicorn on 127.0.0.1, as an endoscopist would: sign in from the printed URL, filter and sort the case
index, open a case, fill the form, sign off; two tabs edit one case and the second sees the conflict; the report
plays inside the app under its Content Security Policy; the export is written, and data.check accepts it.

The clicks come from a driver page that the test serves beside the app (same origin, outside the app's routes): it
opens the app's pages in two iframes, acts on them, and records what happened in ``document.body.dataset``, which
Chromium's --dump-dom prints. The app's pages carry nothing for the test.

With ENDOLIFT_SCREENSHOTS=FOLDER the test also saves FOLDER/review_app.png (a signed-off case, 1280 px wide).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from review.app import store
from review.app.security import allowed_hosts
from review.app.store import open_store
from review.app.web import create_app
from review.screenshot import find_chromium, headless, screenshot
from tests.archive_cases import HOSTILE, copy_case, reviewed_case

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install chromium; .ci/run does)"
)
TOKEN = "browser-token-" + "z" * 30
COVARIATES = ["prior_radiotherapy", "weeks_since_rt", "dose_gy", "distance_av_cm", "prior_attempt", "lesion_size_mm"]

DRIVER = """<!doctype html><html><head><meta charset="utf-8"><title>driver</title></head><body>
<iframe id="a" width="1200" height="900"></iframe><iframe id="b" width="1200" height="900"></iframe>
<script>
(function () {
  "use strict";
  var log = document.body.dataset, A = document.getElementById("a"), B = document.getElementById("b");
  function loaded(frame) {
    return new Promise(function (resolve) {
      frame.addEventListener("load", function () { resolve(frame.contentDocument); }, {once: true});
    });
  }
  function go(frame, url) { var p = loaded(frame); frame.src = url; return p; }
  function press(frame, el) { var p = loaded(frame); el.click(); return p; }
  function wait(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function text(d, id) { var el = d.getElementById(id); return el ? el.textContent.replace(/\\s+/g, " ").trim() : ""; }
  function choose(d, name, value) { d.querySelector('input[name="' + name + '"][value="' + value + '"]').click(); }
  function type(d, name, value) {
    var el = d.querySelector('[name="' + name + '"]');
    el.value = value;
    el.dispatchEvent(new d.defaultView.Event("input", {bubbles: true}));
  }
  async function run() {
    // sign in from the printed URL: the token is taken and dropped from the address; the name is asked
    var d = await go(A, "/login?token=__TOKEN__");
    log.loginPath = A.contentWindow.location.pathname + A.contentWindow.location.search;
    log.asksToken = String(!!d.getElementById("token"));
    type(d, "user", "Dr A");
    d = await press(A, d.querySelector("#login button"));
    // the index: filter, sort, no element made of a case name
    log.rows = d.querySelectorAll("#cases tbody tr").length;
    log.madeOfName = String(!!d.querySelector("#cases [onerror]"));
    var q = d.getElementById("q");
    q.value = "case-a";
    q.dispatchEvent(new d.defaultView.Event("input"));
    log.filtered = d.getElementById("shown").textContent;
    q.value = "";
    q.dispatchEvent(new d.defaultView.Event("input"));
    var byCase = Array.prototype.find.call(d.querySelectorAll("#cases th button"), function (b) {
      return b.textContent === "Case";
    });
    byCase.click();
    byCase.click();
    log.firstDescending = d.querySelector("#cases tbody tr td:nth-child(2)").textContent.trim();
    // open a case, fill the form, sign off
    var link = Array.prototype.find.call(d.querySelectorAll("#cases a"), function (a) {
      return a.textContent === "case-a";
    });
    d = await press(A, link);
    choose(d, "lift", "non-lifting");
    choose(d, "fibrosis", "F2");
    choose(d, "prior_radiotherapy", "yes");
    choose(d, "prior_attempt", "no");
    type(d, "weeks_since_rt", "30");
    type(d, "dose_gy", "50,4");
    type(d, "distance_av_cm", "5");
    type(d, "lesion_size_mm", "35");
    type(d, "patient", "P001");
    type(d, "centre", "site-1");
    type(d, "note", "<b>bled</b> once");
    d = await press(A, d.getElementById("signoff"));
    log.afterSignoff = text(d, "message") + " | " + text(d, "signed");
    log.historyRows = d.querySelectorAll("#history tr").length;
    // two tabs open one case; the second to save sees the first's values and keeps its own
    var both = await Promise.all([go(A, "/case/case-b"), go(B, "/case/case-b")]);
    var da = both[0], db = both[1];
    choose(da, "lift", "partial");
    await press(A, da.getElementById("save"));
    choose(db, "lift", "adequate");
    choose(db, "fibrosis", "F0");
    db = await press(B, db.getElementById("save"));
    log.conflict = text(db, "conflict");
    log.conflictRows = Array.prototype.map.call(db.querySelectorAll("#conflict tr"), function (tr) {
      return Array.prototype.map.call(tr.cells, function (c) { return c.textContent; }).join("/");
    }).join(";");
    log.keptMine = String(db.querySelector('input[name="lift"][value="adequate"]').checked);
    db = await press(B, db.getElementById("signoff"));
    log.resolved = text(db, "message");
    // the report plays inside the app, its own script allowed by hash
    var r = await go(B, "/case/case-a/files/report.html");
    for (var i = 0; i < 100 && r.body.dataset.video !== "canplay"; i++) { await wait(100); }
    log.reportVideo = r.body.dataset.video || "none";
    log.reportError = r.body.dataset.jsError || "";
    // export
    d = await go(A, "/export");
    d = await press(A, d.getElementById("run-export"));
    log.exported = d.getElementById("exported").dataset.cases + " cases, " +
      d.getElementById("exported").dataset.frames + " frames";
    log.done = "yes";
  }
  run().catch(function (e) { log.jsError = String((e && e.stack) || e); });
})();
</script></body></html>
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on a free port of 127.0.0.1, with the driver page beside it; (base URL, archive, state, app, flags)."""
    import uvicorn

    real = reviewed_case(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("served")
    root = tmp / "archive"
    root.mkdir()
    for name in ("case-a", "case-b", HOSTILE):
        copy_case(real, root / name)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    engine = open_store(f"sqlite:///{tmp / 'outcomes.sqlite'}")
    app = create_app(
        root, engine=engine, token=TOKEN, state=tmp / "state", hosts=allowed_hosts("127.0.0.1", port), cookie="s"
    )
    flags: dict[str, str] = {}
    driver = DRIVER.replace("__TOKEN__", TOKEN).encode()

    async def with_driver(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/__driver__":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
            await send({"type": "http.response.body", "body": driver})
            return
        if scope["type"] == "http" and flags.get("cookie"):  # screenshots: a signed-in browser without clicks
            scope = dict(scope, headers=[*scope["headers"], (b"cookie", f"s={flags['cookie']}".encode())])
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(with_driver, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", root, tmp / "state", app, flags
    server.should_exit = True
    thread.join(10)


def dump(url: str, profile: Path) -> tuple[dict[str, str], str]:
    r = subprocess.run(
        headless(
            CHROMIUM, profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=180000", "--dump-dom", url
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    body = re.search(r"<body[^>]*>", r.stdout)
    assert body, r.stderr[-2000:]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0))), r.stderr


def test_an_endoscopist_records_and_signs_off_in_a_real_browser(served, tmp_path, capsys):
    from data.check import main as check

    base, root, state, app, flags = served
    log, stderr = dump(f"{base}/__driver__", tmp_path / "profile")
    # the steps the driver reached, in order (the last one is where a slow or broken step stopped it)
    assert "js-error" not in log and log.get("done") == "yes", (list(log), log.get("js-error"), stderr[-1500:])
    assert log["login-path"] == "/login" and log["asks-token"] == "false"  # the token left the URL at once
    assert log["rows"] == "3" and log["made-of-name"] == "false"
    assert log["filtered"] == "1" and log["first-descending"] == "case-b"
    assert log["after-signoff"].startswith("Signed off. | Signed off by Dr A at ")
    assert int(log["history-rows"]) == 1 + 12  # header + 11 fields + the sign-off
    assert "This case was changed while you were editing it: saved by Dr A" in log["conflict"]
    assert log["conflict-rows"] == (
        "field/stored (Dr A)/yours (in the form);Lift after submucosal injection/partial/adequate;"
        "Submucosal fibrosis (Matsumoto grade)//F0"
    )
    assert log["kept-mine"] == "true"
    assert log["resolved"] == "Signed off."
    if log["report-video"] != "canplay":
        assert log["report-video"] == "loading", log  # a Chromium without H.264: the page ran, the video cannot
    assert log["report-error"] == "" and log["exported"] == "2 cases, 6 frames"
    # what the browser did is in the database, with the audit ...
    engine = app.state.context.engine
    a, b = store.get(engine, "case-a"), store.get(engine, "case-b")
    assert (a["lift"], a["fibrosis"], a["dose_gy"], a["note"], a["signed_off_by"]) == (
        "non-lifting",
        "F2",
        50.4,
        "<b>bled</b> once",
        "Dr A",
    )
    assert (b["lift"], b["fibrosis"], b["revision"]) == ("adequate", "F0", 2)
    assert [h["new"] for h in store.history(engine, "case-b") if h["field"] == "lift"] == ["adequate", "partial"]
    # ... and the export is what data.check reads
    export = state / "export"
    code = check(["--manifest", str(export / "frames.csv"), "--cases", "cases.csv", "--heads",
                  "fibrosis=F0,F1,F2", "lift=adequate,partial,non-lifting", "--covariates", *COVARIATES])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "records: 6" in out.out and "'fibrosis': {'F2': 3, 'F0': 3}" in out.out
    shots = os.environ.get("ENDOLIFT_SCREENSHOTS")
    if shots:
        from review.app.security import Sessions

        flags["cookie"] = Sessions(TOKEN, cookie="s").issue("Dr A")
        try:
            page = tmp_path / "case.html"  # Chromium's --screenshot takes a URL: a page that redirects to the case
            page.write_text(f'<meta http-equiv="refresh" content="0; url={base}/case/case-a">')
            screenshot(page, Path(shots) / "review_app.png", width=1280, height=1800)
        finally:
            flags.pop("cookie")
