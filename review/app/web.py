"""The review app's pages (Starlette): the case index, each case with its report and the outcome form, sign-in, and
the export. Built by ``create_app``; run by ``python -m review.serve`` (review/serve.py).
(Over 350 lines on purpose: the app's routes side by side, so every guard on every route can be read in one place.)

Case names come from folder names and are untrusted: they reach pages through Jinja2's autoescaping and URLs
percent-encoded, and a request names a case only if a case folder of exactly that name exists under OUT_ROOT.
Files are served from inside the case's folder only (report.html, the videos, key frames, overlays, summary.json).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from review import case_rows, index_page
from review.app import store
from review.app.export import export
from review.app.security import USER_MAX, Guard, Sessions, clean_user, page_csp, report_csp
from review.index import make_thumbnail
from review.pages import page_template

SERVED = {".mp4", ".jpg", ".png"}  # besides report.html and summary.json


@dataclass
class Context:
    root: Path
    engine: Any
    sessions: Sessions
    state: Path
    blind: bool
    cache: dict[str, Any] | None = None


def _outcome_cell(rec: dict[str, Any] | None) -> dict[str, str]:
    if rec is None:
        return {"state": "none", "text": "", "title": "nothing recorded"}
    if rec["signed_off_at"]:
        return {
            "state": "signed",
            "text": "signed off",
            "title": f"by {rec['signed_off_by']} at {rec['signed_off_at']}",
        }
    return {"state": "draft", "text": "draft", "title": f"last saved by {rec['updated_by']} at {rec['updated_at']}"}


def create_app(
    root: str | Path,
    *,
    engine,
    token: str,
    state: str | Path,
    hosts: set[str] | None = None,
    blind: bool = False,
    cookie: str = "endolift_session",
) -> Starlette:
    """The app for the case folders under ``root``, outcomes in ``engine`` (review.app.store.open_store), guarded by
    ``token``; ``hosts``: the Host headers it answers (None = any); ``blind``: the model's estimates, overlays and
    reports are hidden (only an original video is shown) while outcomes are recorded."""
    ctx = Context(Path(root), engine, Sessions(token, cookie=cookie), Path(state), blind)

    def session(request: Request) -> dict[str, Any]:
        return request.scope["state"]["session"]

    def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        s = session(request)
        html = page_template(template).render(
            nonce=nonce,
            user=(s or {}).get("user", ""),
            csrf=ctx.sessions.csrf(s["cookie"]) if s else "",
            blind=ctx.blind,
            **values,
        )
        return HTMLResponse(html, status_code=status, headers={"content-security-policy": page_csp(nonce)})

    async def checked_form(request: Request) -> dict[str, str] | None:
        """The POSTed form when its CSRF token belongs to this session, else None."""
        form = await request.form()
        s = session(request)
        if s is None or not ctx.sessions.csrf_ok(s["cookie"], form.get("csrf")):
            return None
        return {k: str(v) for k, v in form.items() if isinstance(v, str)}

    def case_folder(name: str) -> Path | None:
        """The folder of case ``name``: a case folder directly under root of exactly that name, else None."""
        if not name or name in (".", "..") or "/" in name or "\x00" in name:
            return None
        folder = ctx.root / name
        return folder if case_rows.is_case_folder(folder) else None

    def rows() -> list[dict[str, Any]]:
        found, ctx.cache, _ = case_rows.collect_rows(ctx.root, ctx.cache)
        recorded = store.all_outcomes(ctx.engine)
        for r in found:
            q = quote(r["case"], safe="")
            r["url"] = f"/case/{q}"
            r["thumb_url"] = f"/thumb/{q}" if r.get("picture") and not ctx.blind else ""
            r["outcome"] = _outcome_cell(recorded.get(r["case"]))
        return found

    # --- sign-in ---------------------------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        s = session(request)
        if request.method == "GET":
            if ctx.sessions.token_ok(request.query_params.get("token")):  # the printed URL: the token leaves the URL
                response = RedirectResponse("/login", status_code=303)
                ctx.sessions.set_cookie(response, ctx.sessions.issue(""), secure=request.url.scheme == "https")
                return response
            if s and s["user"]:
                return RedirectResponse("/", status_code=303)
            return page(request, "app_login.html", need_token=s is None, error="", name="")
        form = {k: str(v) for k, v in (await request.form()).items() if isinstance(v, str)}
        if s is not None and not ctx.sessions.csrf_ok(s["cookie"], form.get("csrf")):
            return PlainTextResponse("form expired: reload the page", status_code=403)
        if s is None and not ctx.sessions.token_ok(form.get("token")):
            return page(request, "app_login.html", 401, need_token=True, error="wrong token", name=form.get("user", ""))
        user = clean_user(form.get("user", ""))
        if not user:
            return page(
                request,
                "app_login.html",
                400,
                need_token=s is None,
                error=f"type your name (1-{USER_MAX} characters): it is recorded with every change you make",
                name="",
            )
        response = RedirectResponse("/", status_code=303)
        ctx.sessions.set_cookie(response, ctx.sessions.issue(user), secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        if await checked_form(request) is None:
            return PlainTextResponse("form expired: reload the page", status_code=403)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(ctx.sessions.cookie, path="/")
        return response

    # --- the index and the cases -----------------------------------------------------------------------------------

    async def home(request: Request) -> Response:
        found = await run_in_threadpool(rows)
        s = session(request)
        nonce = secrets.token_urlsafe(16)
        html = index_page.render_index(
            found,
            title=f"endolift review: {ctx.root.resolve().name}",
            app={"user": s["user"], "csrf": ctx.sessions.csrf(s["cookie"]), "blind": ctx.blind, "nonce": nonce},
        )
        return HTMLResponse(html, headers={"content-security-policy": page_csp(nonce)})

    def case_view(name: str, folder: Path) -> dict[str, Any]:
        row = index_page.row_cells(case_rows.read_case(folder), [])
        heads = [] if ctx.blind else case_rows.head_names([row])
        q = quote(name, safe="")
        keyframes = [] if ctx.blind else [f"/case/{q}/files/keyframes/{quote(p.name)}" for p in _keyframes(folder)]
        originals = sorted(folder.glob("*_original.mp4"))
        return {
            "row": row,
            "q": q,
            "estimates": [(h, index_page.head_cell(row["heads"].get(h))) for h in heads],
            "keyframes": keyframes,
            "report_url": f"/case/{q}/files/report.html" if row.get("report") and not ctx.blind else "",
            "original_url": f"/case/{q}/files/{quote(originals[0].name)}" if ctx.blind and originals else "",
            "history": store.history(ctx.engine, name),
        }

    def form_page(
        request: Request,
        name: str,
        folder: Path,
        *,
        rec: dict[str, Any] | None,
        values: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        conflict: dict[str, Any] | None = None,
        revision: int | None = None,
        message: str = "",
        status: int = 200,
    ) -> HTMLResponse:
        """The case page with its form: the stored values, or ``values`` as typed (shown again after an error or a
        conflict, with ``revision``: the one the next save starts from)."""
        shown = values if values is not None else {f.name: store.text_of((rec or {}).get(f.name)) for f in store.FIELDS}
        return page(
            request,
            "app_case.html",
            status,
            case=name,
            fields=store.FIELDS,
            values=shown,
            errors=errors or {},
            rec=rec,
            revision=revision if revision is not None else (rec or {}).get("revision", 0),
            conflict=conflict,
            message=message,
            **case_view(name, folder),
        )

    async def case(request: Request) -> Response:
        name = request.path_params["case"]
        folder = case_folder(name)
        if folder is None:
            return PlainTextResponse("no such case", status_code=404)
        if request.method == "GET":
            rec = await run_in_threadpool(store.get, ctx.engine, name)
            saved = request.query_params.get("saved", "")
            message = {"1": "Saved.", "2": "Signed off.", "3": "Reopened."}.get(saved, "")
            return await run_in_threadpool(lambda: form_page(request, name, folder, rec=rec, message=message))
        form = await checked_form(request)
        if form is None:
            return PlainTextResponse("form expired: reload the page", status_code=403)
        sign_off = form.get("action") == "signoff"
        values, errors = store.validate(form, sign_off=sign_off)
        typed = {f.name: form.get(f.name, "").strip() for f in store.FIELDS}
        try:
            revision = int(form.get("revision", ""))
        except ValueError:
            return PlainTextResponse("form damaged: reload the page", status_code=400)
        if errors:
            rec = await run_in_threadpool(store.get, ctx.engine, name)
            return await run_in_threadpool(
                lambda: form_page(
                    request,
                    name,
                    folder,
                    rec=rec,
                    values=typed,
                    errors=errors,
                    revision=revision,
                    message=f"Not saved: {len(errors)} field(s) to correct.",
                    status=400,
                )
            )
        model = await run_in_threadpool(_model_of, folder)
        result = await run_in_threadpool(
            lambda: store.save(
                ctx.engine,
                case_id=name,
                values=values,
                revision=revision,
                user=session(request)["user"],
                sign_off=sign_off,
                model=model,
            )
        )
        if result.ok:
            return RedirectResponse(f"/case/{quote(name, safe='')}?saved={2 if sign_off else 1}", status_code=303)
        theirs = result.current
        if result.conflict:
            conflict = {
                "revision": result.revision,
                "by": (theirs or {}).get("updated_by", ""),
                "at": (theirs or {}).get("updated_at", ""),
                "signed": bool((theirs or {}).get("signed_off_at")),
                "diffs": [
                    (f.label, store.text_of((theirs or {}).get(f.name)), store.text_of(values.get(f.name)))
                    for f in store.FIELDS
                    if (theirs or {}).get(f.name) != values.get(f.name)
                ],
            }
            return await run_in_threadpool(
                lambda: form_page(
                    request,
                    name,
                    folder,
                    rec=theirs,
                    values=typed,
                    conflict=conflict,
                    revision=result.revision,
                    status=409,
                )
            )
        return await run_in_threadpool(
            lambda: form_page(request, name, folder, rec=theirs, message=f"Not saved: {result.refused}.", status=409)
        )

    async def reopen(request: Request) -> Response:
        name = request.path_params["case"]
        if case_folder(name) is None:
            return PlainTextResponse("no such case", status_code=404)
        form = await checked_form(request)
        if form is None:
            return PlainTextResponse("form expired: reload the page", status_code=403)
        reason = " ".join(form.get("reason", "").split())[:300]
        try:
            revision = int(form.get("revision", ""))
        except ValueError:
            return PlainTextResponse("form damaged: reload the page", status_code=400)
        if not reason:
            return PlainTextResponse("give a reason to reopen a signed-off case (go back)", status_code=400)
        result = await run_in_threadpool(
            lambda: store.reopen(
                ctx.engine, case_id=name, revision=revision, user=session(request)["user"], reason=reason
            )
        )
        if not result.ok:
            return PlainTextResponse("the case changed meanwhile: go back and reload it", status_code=409)
        return RedirectResponse(f"/case/{quote(name, safe='')}?saved=3", status_code=303)

    async def files(request: Request) -> Response:
        folder = case_folder(request.path_params["case"])
        rel = request.path_params["path"]
        if folder is None:
            return PlainTextResponse("no such case", status_code=404)
        base = folder.resolve()
        target = (folder / rel).resolve()
        allowed = rel == "summary.json" or rel == "report.html" or Path(rel).suffix.lower() in SERVED
        if ctx.blind:
            allowed = rel.endswith("_original.mp4") and "/" not in rel
        if not allowed or base not in target.parents or not target.is_file():
            return PlainTextResponse("not found", status_code=404)
        if rel == "report.html":
            html = await run_in_threadpool(target.read_text, encoding="utf-8")
            return HTMLResponse(html, headers={"content-security-policy": report_csp(html)})
        return FileResponse(target)

    async def thumb(request: Request) -> Response:
        folder = case_folder(request.path_params["case"])
        if folder is None or ctx.blind:
            return PlainTextResponse("not found", status_code=404)
        row = await run_in_threadpool(case_rows.read_case, folder)
        path = await run_in_threadpool(make_thumbnail, ctx.root, row)
        if path is None and row.get("picture"):
            path = folder / row["picture"]  # the state folder may be read-only: the picture itself
        if path is None or not path.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path)

    # --- export ----------------------------------------------------------------------------------------------------

    async def export_page(request: Request) -> Response:
        recorded = await run_in_threadpool(store.all_outcomes, ctx.engine)
        counts = {
            "signed": sum(bool(r["signed_off_at"]) for r in recorded.values()),
            "draft": sum(not r["signed_off_at"] for r in recorded.values()),
        }
        result = None
        if request.method == "POST":
            form = await checked_form(request)
            if form is None:
                return PlainTextResponse("form expired: reload the page", status_code=403)
            result = await run_in_threadpool(
                lambda: export(
                    root=ctx.root,
                    engine=ctx.engine,
                    out=ctx.state / "export" / "cases.csv",
                    include_drafts=form.get("drafts") == "yes",
                )
            )
        return page(request, "app_export.html", counts=counts, result=result, folder=str(ctx.state / "export"))

    async def export_download(request: Request) -> Response:
        path = ctx.state / "export" / "cases.csv"
        if not path.is_file():
            return PlainTextResponse("no export yet", status_code=404)
        return FileResponse(path, media_type="text/csv", filename="cases.csv")

    routes = [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/case/{case}", case, methods=["GET", "POST"]),
        Route("/case/{case}/reopen", reopen, methods=["POST"]),
        Route("/case/{case}/files/{path:path}", files),
        Route("/thumb/{case}", thumb),
        Route("/export", export_page, methods=["GET", "POST"]),
        Route("/export/cases.csv", export_download),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(Guard, sessions=ctx.sessions, hosts=hosts)
    app.state.context = ctx
    return app


def _keyframes(folder: Path) -> list[Path]:
    return sorted((folder / "keyframes").glob("*.jpg")) if (folder / "keyframes").is_dir() else []


def _model_of(folder: Path) -> str:
    """'name (commit)' of the model whose review the case folder holds, '' when unknown."""
    row = case_rows.read_case(folder)
    if not row.get("model"):
        return ""
    return f"{row['model']} ({row['model_commit']})" if row.get("model_commit") else row["model"]
