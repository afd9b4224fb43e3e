"""The local review app: the case index and each report, and a form per case where endoscopists record lift and
fibrosis outcomes and the covariates known before the resection; and the export of what they signed off, in the
format ``data.check`` and ``train.py`` read.

python -m review.serve OUT_ROOT [--port 8765] [--db URL] [--blind]
python -m review.serve export [OUT_ROOT] --out cases.csv [--db URL] [--include-drafts]

OUT_ROOT is the folder whose subfolders are infer.py's case folders (default for export: the current folder). The
app keeps its state in ``OUT_ROOT/.review/`` (``--state`` elsewhere): the per-install access token and, unless
``--db`` names another database (any SQLAlchemy URL, e.g. ``postgresql+psycopg://user@host/endolift`` for a
department; install its driver), the SQLite database ``outcomes.sqlite``. It binds to 127.0.0.1 and refuses any
other address unless ``--allow-remote`` is given (then put it behind the hospital's TLS proxy). At start it prints a
sign-in URL with the token; every request needs the session that URL (or the token typed on the sign-in page)
opens. Nothing about a case is logged. Security design: review/app/security.py; the export: review/app/export.py.
Exit codes: 0 success, 2 a user error (one line on stderr), 1 a bug.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import UserError

DEFAULT_PORT = 8765
STATE = ".review"


def state_dir(root: Path, state: Path | None) -> Path:
    """Where the token and the default database live: ``--state``, else OUT_ROOT/.review; created, or a clear
    error when it cannot be."""
    folder = state or root / STATE
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the state folder {folder} ({e.strerror}): give a writable --state") from None
    return folder


def database_url(db: str | None, state: Path) -> str:
    return db or f"sqlite:///{(state / 'outcomes.sqlite').resolve()}"


def _root(path: Path) -> Path:
    from review.case_rows import case_folders

    case_folders(path)  # the folder exists and is an archive, not one case
    return path


def serve(a: argparse.Namespace) -> int:
    import uvicorn

    from review.app.security import _is_loopback, allowed_hosts, load_token
    from review.app.store import open_store
    from review.app.web import create_app
    from review.case_rows import case_folders

    root = _root(a.root)
    if not _is_loopback(a.host) and not a.allow_remote:
        raise UserError(
            f"--host {a.host} would let other machines reach the app: add --allow-remote to mean it (and serve it "
            "behind the hospital's TLS proxy), or leave --host at 127.0.0.1"
        )
    state = state_dir(root, a.state)
    engine = open_store(database_url(a.db, state))
    token = load_token(state, new=a.new_token)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((a.host, a.port))
        sock.listen(2048)  # connections wait from now on, also before the server below accepts them
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {a.host}:{a.port} ({e.strerror}): choose another --port") from None
    port = sock.getsockname()[1]
    app = create_app(
        root,
        engine=engine,
        token=token,
        state=state,
        hosts=allowed_hosts(a.host, port),
        blind=a.blind,
        cookie=f"endolift_session_{port}",
    )
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(
        f"endolift review app: {len(case_folders(root))} case folder(s) under {root}\n"
        f"outcomes: {engine.url.render_as_string(hide_password=True)}\n"
        f"sign in:  http://{host}:{port}/login?token={token}\n"
        f"(the token is also in {state / 'token'}; anyone holding it can sign in. Stop with Ctrl-C.)",
        flush=True,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def run_export(a: argparse.Namespace) -> int:
    from review.app.export import export
    from review.app.store import open_store

    root = _root(a.root)
    state = a.state or root / STATE
    if a.db is None and not (state / "outcomes.sqlite").is_file():
        raise UserError(f"no outcomes recorded under {root} ({state / 'outcomes.sqlite'} is missing): give --db")
    engine = open_store(database_url(a.db, state))
    result = export(root=root, engine=engine, out=a.out, include_drafts=a.include_drafts)
    print(f"{result.n_cases} case(s), {result.n_frames} frame(s) -> {result.cases}, {result.frames}")
    if result.warnings:
        print(
            f"warning: {len(result.warnings)} case(s) have no frames (their labels are exported): see "
            f"{result.cases.parent / 'export_warnings.txt'}",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        ap = argparse.ArgumentParser(
            prog="python -m review.serve export",
            description="Write the signed-off cases as cases.csv + frames.csv (data.check / train.py format).",
        )
        ap.add_argument("root", type=Path, nargs="?", default=Path("."), help="OUT_ROOT (default: this folder)")
        ap.add_argument("--out", type=Path, required=True, help="the case table to write (frames.csv goes beside)")
        ap.add_argument("--db", default=None, help="database URL (default: OUT_ROOT/.review/outcomes.sqlite)")
        ap.add_argument("--state", type=Path, default=None, help="state folder (default: OUT_ROOT/.review)")
        ap.add_argument("--include-drafts", action="store_true", help="also cases with an outcome not signed off")
        a = ap.parse_args(argv[1:])
        run = run_export
    else:
        ap = argparse.ArgumentParser(prog="python -m review.serve", description=__doc__.splitlines()[0])
        ap.add_argument("root", type=Path, help="OUT_ROOT: the folder whose subfolders are infer.py's case folders")
        ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
        ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
        ap.add_argument(
            "--db", default=None, help="SQLAlchemy database URL (default: OUT_ROOT/.review/outcomes.sqlite)"
        )
        ap.add_argument("--state", type=Path, default=None, help="folder for the token and the default database")
        ap.add_argument("--allow-remote", action="store_true", help="allow --host beyond this machine")
        ap.add_argument("--new-token", action="store_true", help="replace the access token (signs everyone out)")
        ap.add_argument("--blind", action="store_true", help="hide the model's estimates, overlays and reports")
        a = ap.parse_args(argv)
        run = serve
    try:
        return run(a)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
