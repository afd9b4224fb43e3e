"""The review app's guard: a per-install token, signed session cookies, CSRF tokens, host and origin checks,
security headers, and logs without patient data.

- **Token.** A random token is made at the first start and kept in the state folder (``token``, mode 0600); the
  command prints a sign-in URL holding it. Every request needs a session cookie, which only that token can open
  (the sign-in page takes it from the URL or a form). Sessions are HMAC-signed with a key derived from the token,
  so ``--new-token`` signs everyone out. A session names its user (typed at sign-in): the audit's "who".
- **CSRF.** Every form carries a token bound to the session (HMAC); a POST without the right one is refused, and so
  is a POST whose Origin header names another site. Cookies are HttpOnly and SameSite=Strict.
- **Hosts.** Bound to localhost, only requests addressed to localhost / 127.0.0.1 at the app's port are served (a
  web page elsewhere cannot reach the app through DNS rebinding).
- **Headers.** Every response: no caching, no referrer, no MIME sniffing, no framing by other sites, and a Content
  Security Policy (the app's pages run only their own script, by nonce; a report runs only its own inline script,
  by hash).
- **Logs.** No access log (paths name cases; sign-in URLs hold the token); an unexpected error is logged as its
  type and code location only, never its message or the request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import traceback
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

log = logging.getLogger("endolift.review")

SESSION_HOURS = 12
USER_MAX = 80
OPEN_PATHS = ("/login",)  # served without a session (the sign-in page itself)


def load_token(state: Path, *, new: bool = False) -> str:
    """The install's token from ``state/token``, made (or replaced, with ``new``) when missing; readable by the
    owner only."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / "token"
    if path.is_file() and not new:
        token = path.read_text().strip()
        if len(token) >= 24:
            return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f"token.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)
    return token


def clean_user(name: str) -> str:
    """A user name as typed, trimmed; '' when empty, too long or holding control characters."""
    name = " ".join(str(name or "").split())
    if not name or len(name) > USER_MAX or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return ""
    return name


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signed session cookies and CSRF tokens; the key is derived from the install's token."""

    def __init__(self, token: str, *, cookie: str = "endolift_session", hours: float = SESSION_HOURS) -> None:
        self._token = token.encode()
        self._key = hmac.new(self._token, b"endolift review session v1", hashlib.sha256).digest()
        self.cookie = cookie
        self.max_age = int(hours * 3600)

    def token_ok(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(str(candidate).encode(), self._token)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, user: str) -> str:
        """A cookie value for ``user`` ('' = signed in with the token, name not given yet)."""
        body = json.dumps({"u": user, "e": int(time.time()) + self.max_age, "n": secrets.token_hex(8)})
        payload = _b64(body.encode())
        return f"{payload}.{self._sign(payload)}"

    def read(self, value: str | None) -> dict[str, Any] | None:
        """The session of a cookie value, or None when absent, forged or expired."""
        if not value or value.count(".") != 1:
            return None
        payload, sig = value.split(".")
        if not hmac.compare_digest(sig, self._sign(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("e"), int) or body["e"] < time.time():
            return None
        return {"user": str(body.get("u") or ""), "cookie": value}

    def csrf(self, cookie: str) -> str:
        """The CSRF token of forms shown to the holder of ``cookie``."""
        return self._sign("csrf:" + cookie)

    def csrf_ok(self, cookie: str, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(str(candidate), self.csrf(cookie))

    def set_cookie(self, response: Response, value: str, *, secure: bool) -> None:
        response.set_cookie(
            self.cookie, value, max_age=self.max_age, httponly=True, samesite="strict", secure=secure, path="/"
        )


BASE_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "SAMEORIGIN",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'self'"


def page_csp(nonce: str) -> str:
    """The app's own pages: their one script by nonce; pictures, videos and forms from the app only."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src 'self'; "
        "media-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
    )


def report_csp(html: str) -> str:
    """A report written by infer.py: only its own inline scripts (by hash: an injected handler or tag would not
    run), its pictures and videos from beside it, no network, no forms."""
    import re

    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for attrs, m in re.findall(r"<script(\s[^>]*)?>(.*?)</script>", html, flags=re.S | re.I)
        if "src=" not in (attrs or "")
    ]
    scripts = " ".join(hashes) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
        "img-src 'self'; media-src 'self'; form-action 'none'; frame-ancestors 'self'; base-uri 'none'"
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers the app answers when bound to ``host``: localhost's names at ``port``; None (any) when it is
    bound beyond localhost (--allow-remote: the token still guards it)."""
    if not _is_loopback(host):
        return None
    return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} | {f"{host}:{port}"}


def where(exc: BaseException) -> str:
    """An exception as its type and code locations only (no message: it may quote a case or a form value)."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return f"{type(exc).__name__} at " + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))


class Guard:
    """ASGI middleware in front of every route: host check, session check (sign-in redirect), origin check of
    unsafe methods, security headers on every response, and errors logged without their content."""

    def __init__(self, app, *, sessions: Sessions, hosts: Collection[str] | None) -> None:
        self.app, self.sessions, self.hosts = app, sessions, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in BASE_HEADERS.items() if k.encode() not in have]
                if b"content-security-policy" not in have:
                    extra.append((b"content-security-policy", DEFAULT_CSP.encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        response = self.check(request)
        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as e:  # a bug: say where, never what (the message may hold patient data)
            log.error("internal error: %s", where(e))
            await PlainTextResponse("internal error (logged without details)", status_code=500)(
                scope, receive, send_with_headers
            )

    def check(self, request: Request) -> Response | None:
        """A response that stops the request here (refused, or sent to sign in), or None to let it through."""
        if self.hosts is not None and request.headers.get("host", "") not in self.hosts:
            return PlainTextResponse("unexpected Host header", status_code=421)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
                return PlainTextResponse("cross-site request refused", status_code=403)
        session = self.sessions.read(request.cookies.get(self.sessions.cookie))
        request.scope.setdefault("state", {})["session"] = session
        if request.url.path in OPEN_PATHS:
            return None
        if session is None or not session["user"]:
            if request.method in ("GET", "HEAD"):
                return RedirectResponse("/login", status_code=303)
            return PlainTextResponse("sign in first", status_code=401)
        return None
