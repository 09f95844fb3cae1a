"""What the web app's routes share: the server's settings, the open studies, the generation worker,
who is asking (admin, rater), CSRF checks and page rendering.

Access: on 127.0.0.1 (the default) the person at the machine is the admin and, without an invite, the
arena's `local` rater. On any other host every arena endpoint needs a rater token (an invite link
`/arena/<study>?token=...` turns it into a cookie, or send `Authorization: Bearer <token>`), and the
gallery, generation, results and admin actions need the admin token printed at start-up
(`/admin?token=...` sets its cookie).
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from opencanvas.humaneval.store import Study, StudyError, check_name, open_study, study_names
from opencanvas.untrusted import safe_url
from opencanvas.web import gallery
from opencanvas.web.security import ADMIN_COOKIE, MAX_BODY, SESSION_COOKIE, Secrets, bearer, is_local
from opencanvas.workspace import Workspace

HERE = Path(__file__).parent
CARD_NAME = re.compile(r"^[A-Z_]+\.md$")


@dataclass
class WebConfig:
    ws: Workspace
    host: str = "127.0.0.1"
    port: int = 8000
    clip: str | None = None
    device: str = "cpu"
    max_body: int = MAX_BODY
    secrets: Secrets = field(default_factory=Secrets)

    @property
    def local(self) -> bool:
        return is_local(self.host)


class Context:
    """What the routes share: the config, open studies and the generation worker (started on first use)."""

    def __init__(self, config: WebConfig) -> None:
        self.config, self.ws, self.secrets = config, config.ws, config.secrets
        self._studies: dict[str, Study] = {}
        self._generator: Any = None
        self.prepare_jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(["html"], default=True))
        self.env.filters["safe_url"] = safe_url
        self.env.filters["pct"] = lambda x: "-" if x is None else f"{100 * float(x):.1f}%"
        self.env.filters["num"] = lambda x, d=4: "-" if x is None else (f"{x:.{d}g}" if isinstance(x, float) else x)

    # ---- studies and raters ---------------------------------------------------
    def study(self, name: str) -> Study:
        try:
            check_name(name)
        except StudyError:
            raise HTTPException(404, f"no study {name!r}") from None
        with self._lock:
            if name not in self._studies:
                if name not in study_names(self.ws):
                    raise HTTPException(404, f"no study {name!r}: prepare it with `opencanvas humaneval prepare`")
                self._studies[name] = open_study(self.ws, name)
            return self._studies[name]

    def rater(self, request: Request, study: Study) -> int:
        """The rater making this request (401 without a valid token on a non-local host)."""
        token = bearer(request.headers) or request.cookies.get(f"oc_rater_{study.name}")
        rater = study.rater_id(token)
        if rater is not None:
            return rater
        if token and bearer(request.headers) and not self.secrets.is_admin(token):
            raise HTTPException(401, "this rater token is not valid for this study")
        if not self.config.local:
            raise HTTPException(401, "a rater token is needed: open your invite link, or send "
                                     "`Authorization: Bearer <token>`")
        with self._lock:
            return study.local_rater()

    def is_admin(self, request: Request) -> bool:
        if self.config.local:
            return True
        return self.secrets.is_admin(bearer(request.headers) or request.cookies.get(ADMIN_COOKIE))

    def require_admin(self, request: Request) -> None:
        if not self.is_admin(request):
            raise HTTPException(401, "the admin token is needed (printed when the server started): open "
                                     "/admin?token=... once, or send `Authorization: Bearer <token>`")

    def check_post(self, request: Request) -> None:
        """CSRF: a bearer token, or the session's CSRF token in X-CSRF-Token; never a foreign Origin."""
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            raise HTTPException(403, f"cross-site request from {origin} refused")
        if bearer(request.headers):
            return
        if not self.secrets.csrf_ok(request.cookies.get(SESSION_COOKIE), request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token: reload the page (API clients: send "
                                     "`Authorization: Bearer <token>`)")

    def start_prepare(self, name: str, models: list[str], prompts: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Run `humaneval prepare` in a thread; its state is polled at /api/humaneval/prepare/<job>."""
        from opencanvas.humaneval.prepare import prepare

        job: dict[str, Any] = {"id": secrets.token_hex(8), "study": name, "status": "running", "error": None,
                               "summary": None}
        self.prepare_jobs[job["id"]] = job

        def work() -> None:
            try:
                job["summary"] = prepare(self.ws, name, models, prompts, device=self.config.device, **options)
                job["status"] = "done"
            except Exception as e:  # noqa: BLE001 - reported through the job, the server lives on
                job["status"], job["error"] = "failed", f"{type(e).__name__}: {e}"

        threading.Thread(target=work, name=f"prepare-{name}", daemon=True).start()
        return dict(job)

    @property
    def generator(self) -> Any:
        from opencanvas.web.generation import Generator

        with self._lock:
            if self._generator is None:
                self._generator = Generator(self.ws, self.config.clip, self.config.device)
            return self._generator

    def run_or_404(self, run: str) -> str:
        if run not in gallery.run_names(self.ws):
            raise HTTPException(404, f"no run {run!r} in this workspace")
        return run

    # ---- pages ----------------------------------------------------------------------
    def render(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(24)
        html = self.env.get_template(template).render(
            csrf_token=self.secrets.csrf_token(session), admin=self.is_admin(request), **values)
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(SESSION_COOKIE) != session:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
        return response


def json_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return data


async def read_json(request: Request) -> dict[str, Any]:
    if not (request.headers.get("content-type") or "").startswith("application/json"):
        raise HTTPException(415, "send the body as application/json")
    try:
        return json_object(await request.json())
    except ValueError:
        raise HTTPException(422, "the body is not valid JSON") from None


def file_response(path: Path, cache: bool = True) -> Response:
    media = gallery.SERVED_SUFFIXES.get(path.suffix.lower(), "application/octet-stream")
    return Response(path.read_bytes(), media_type=media,
                    headers={"cache-control": "private, max-age=3600" if cache else "no-store"})
