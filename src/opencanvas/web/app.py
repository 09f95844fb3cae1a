"""The FastAPI app: pages (Jinja2, autoescaped) over a JSON API.

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

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from opencanvas.humaneval.store import CHOICES, QUESTIONS, Study, StudyError, check_name, open_study, study_names
from opencanvas.web import gallery
from opencanvas.web.security import (
    ADMIN_COOKIE,
    MAX_BODY,
    SESSION_COOKIE,
    Secrets,
    SecurityMiddleware,
    bearer,
    is_local,
)
from opencanvas.web.text import markdown_html, safe_url
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
        self.env.filters["num"] = lambda x, d=3: "-" if x is None else (f"{x:.{d}g}" if isinstance(x, float) else x)

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

    # ---- pages ----------------------------------------------------------------------
    def render(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(24)
        html = self.env.get_template(template).render(
            csrf_token=self.secrets.csrf_token(session), admin=self.is_admin(request), **values)
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(SESSION_COOKIE) != session:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
        return response


def _json_body(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return data


async def _read_json(request: Request) -> dict[str, Any]:
    if not (request.headers.get("content-type") or "").startswith("application/json"):
        raise HTTPException(415, "send the body as application/json")
    try:
        return _json_body(await request.json())
    except ValueError:
        raise HTTPException(422, "the body is not valid JSON") from None


def _pair_json(study: Study, pair: Any) -> dict[str, Any]:
    return {"pair_id": pair.id, "prompt": pair.prompt,
            "left_url": f"/humaneval/{study.name}/images/{pair.left_image}.png",
            "right_url": f"/humaneval/{study.name}/images/{pair.right_image}.png",
            "questions": [{"id": q, "text": QUESTIONS.get(q, q)} for q in study.questions],
            "choices": list(CHOICES)}


def _results(ctx: Context, study: Study) -> dict[str, Any]:
    from opencanvas.humaneval.report import study_results

    return study_results(study)


def create_app(config: WebConfig) -> FastAPI:
    ctx = Context(config)
    app = FastAPI(title="OpenCanvas", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.add_middleware(SecurityMiddleware, max_body=config.max_body)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in (request.headers.get("accept") or ""):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return ctx.render(request, "error.html", status=exc.status_code, status_code=exc.status_code,
                          message=exc.detail)

    # ---- gallery ---------------------------------------------------------------------------
    @app.get("/api/runs")
    def api_runs(request: Request) -> dict[str, Any]:
        ctx.require_admin(request)
        return {"runs": [gallery.run_summary(ctx.ws, r) for r in gallery.run_names(ctx.ws)],
                "studies": study_names(ctx.ws)}

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        if not ctx.is_admin(request):
            return ctx.render(request, "welcome.html")
        data = api_runs(request)
        return ctx.render(request, "index.html", **data)

    def _run_or_404(run: str) -> str:
        if run not in gallery.run_names(ctx.ws):
            raise HTTPException(404, f"no run {run!r} in this workspace")
        return run

    @app.get("/api/runs/{run}")
    def api_run(request: Request, run: str) -> dict[str, Any]:
        ctx.require_admin(request)
        return gallery.run_detail(ctx.ws, _run_or_404(run))

    @app.get("/runs/{run}", response_class=HTMLResponse)
    def run_page(request: Request, run: str) -> Response:
        return ctx.render(request, "run.html", run=api_run(request, run))

    @app.get("/runs/{run}/cards/{name}")
    def card_page(request: Request, run: str, name: str) -> Response:
        ctx.require_admin(request)
        _run_or_404(run)
        if not CARD_NAME.match(name):
            path = gallery.served_file(ctx.ws, run, f"cards/{name}")   # the card's own images
            if path is None:
                raise HTTPException(404, "no such file")
            return _file(path)
        path = ctx.ws.run_dir(run) / "cards" / name
        if not path.is_file():
            raise HTTPException(404, f"run {run!r} has no {name}: write it with `opencanvas card --run {run}`")
        return ctx.render(request, "card.html", run=run, name=name,
                          body=markdown_html(path.read_text(encoding="utf-8")))

    @app.get("/files/runs/{run}/{rel:path}")
    def run_file(request: Request, run: str, rel: str) -> Response:
        ctx.require_admin(request)
        path = gallery.served_file(ctx.ws, run, rel)
        if path is None:
            raise HTTPException(404, "no such file (only images under a run's samples/, eval/ and cards/ are served)")
        return _file(path)

    # ---- generation -------------------------------------------------------------------------
    @app.get("/generate", response_class=HTMLResponse)
    def generate_page(request: Request) -> Response:
        ctx.require_admin(request)
        from opencanvas.diffusion.samplers import SAMPLERS

        return ctx.render(request, "generate.html", runs=gallery.run_names(ctx.ws), samplers=list(SAMPLERS))

    @app.post("/api/generate")
    async def api_generate(request: Request) -> dict[str, Any]:
        ctx.check_post(request)
        ctx.require_admin(request)
        from opencanvas.diffusion.samplers import SAMPLERS
        from opencanvas.web.generation import MAX_SEED, MAX_STEPS, GenerateRequest

        body = await _read_json(request)
        try:
            req = GenerateRequest(run=_run_or_404(str(body.get("run", ""))), prompt=str(body.get("prompt", ""))[:500],
                                  steps=int(body.get("steps", 25)), guidance=float(body.get("guidance", 7.5)),
                                  sampler=str(body.get("sampler", "dpmpp-2m")), seed=int(body.get("seed", 0)),
                                  negative_prompt=str(body.get("negative_prompt", ""))[:500],
                                  k=int(body.get("k", 4)))
        except (TypeError, ValueError):
            raise HTTPException(422, "steps, seed and k must be integers and guidance a number") from None
        if not 1 <= req.steps <= MAX_STEPS or not 0 <= req.seed <= MAX_SEED or not 1 <= req.k <= 16:
            raise HTTPException(422, f"steps must be 1..{MAX_STEPS}, seed 0..{MAX_SEED}, k 1..16")
        if req.sampler not in SAMPLERS or not 0 <= req.guidance <= 50:
            raise HTTPException(422, f"sampler must be one of {', '.join(SAMPLERS)}; guidance 0..50")
        return ctx.generator.submit(req).to_dict()

    @app.get("/api/generate/{job_id}")
    def api_job(request: Request, job_id: str) -> dict[str, Any]:
        ctx.require_admin(request)
        job = ctx.generator.get(job_id)
        if job is None:
            raise HTTPException(404, f"no generation job {job_id!r}")
        return job.to_dict()

    @app.get("/training-images/{run}/{i}")
    def training_image(request: Request, run: str, i: int) -> Response:
        ctx.require_admin(request)
        from opencanvas.web.neighbours import training_image as read

        index = ctx.generator.index_for(_run_or_404(run))
        found = read(ctx.ws, index, i) if index is not None else None
        if found is None:
            raise HTTPException(404, "no such training image (generate from this run first)")
        data, ext = found
        return Response(data, media_type="image/png" if ext == "png" else "image/jpeg",
                        headers={"cache-control": "private, max-age=3600"})

    # ---- human evaluation ----------------------------------------------------------------------
    @app.get("/admin")
    def admin_login(request: Request, token: str = "") -> Response:
        if not ctx.config.local and not ctx.secrets.is_admin(token):
            raise HTTPException(401, "wrong admin token")
        response = RedirectResponse("/", status_code=303)
        if token:
            response.set_cookie(ADMIN_COOKIE, token, httponly=True, samesite="strict")
        return response

    # async: the page is cheap, and a threadpool hop would queue it behind the GIL under a voting load
    @app.get("/arena/{study_name}", response_class=HTMLResponse)
    async def arena_page(request: Request, study_name: str, token: str = "") -> Response:
        study = ctx.study(study_name)
        if token:
            if study.rater_id(token) is None:
                raise HTTPException(401, "this invite token is not valid for this study")
            response = RedirectResponse(f"/arena/{study.name}", status_code=303)   # keep the token out of history
            response.set_cookie(f"oc_rater_{study.name}", token, httponly=True, samesite="strict")
            return response
        ctx.rater(request, study)
        return ctx.render(request, "arena.html", study=study.name,
                          questions=[{"id": q, "text": QUESTIONS.get(q, q)} for q in study.questions])

    @app.get("/api/humaneval/{study_name}/next")
    async def api_next(request: Request, study_name: str) -> Response:
        study = ctx.study(study_name)
        pair = study.next_pair(ctx.rater(request, study))
        if pair is None:
            return Response(status_code=204)
        return JSONResponse(_pair_json(study, pair))

    @app.post("/api/humaneval/{study_name}/votes")
    async def api_vote(request: Request, study_name: str) -> dict[str, Any]:
        ctx.check_post(request)
        study = ctx.study(study_name)
        rater = ctx.rater(request, study)
        body = await _read_json(request)
        try:
            vote_id = study.vote(rater, str(body.get("pair_id", "")), str(body.get("question", "")),
                                 str(body.get("choice", "")))
        except StudyError as e:
            raise HTTPException(422, str(e)) from None
        return {"ok": True, "vote_id": vote_id}   # sent only after the vote's transaction committed

    @app.get("/humaneval/{study_name}/images/{name}")
    def arena_image(request: Request, study_name: str, name: str) -> Response:
        study = ctx.study(study_name)
        if not ctx.is_admin(request):
            ctx.rater(request, study)
        path = study.image_path(name.removesuffix(".png")) if name.endswith(".png") else None
        if path is None or not path.resolve().is_relative_to(study.images_dir.resolve()) or not path.is_file():
            raise HTTPException(404, "no such image")
        return _file(path)

    @app.get("/api/humaneval/{study_name}/results")
    def api_results(request: Request, study_name: str) -> dict[str, Any]:
        ctx.require_admin(request)
        return _results(ctx, ctx.study(study_name))

    @app.get("/humaneval/{study_name}/results", response_class=HTMLResponse)
    def results_page(request: Request, study_name: str) -> Response:
        results = api_results(request, study_name)
        return ctx.render(request, "results.html", study=study_name, results=results)

    @app.get("/humaneval/{study_name}/results.png")
    def results_png(request: Request, study_name: str) -> Response:
        from opencanvas.humaneval.report import results_plot

        results = api_results(request, study_name)
        path = results_plot(results, ctx.study(study_name).path.with_suffix("") / "results.png")
        return _file(path, cache=False)

    @app.post("/api/humaneval/{study_name}/raters")
    async def api_add_raters(request: Request, study_name: str) -> dict[str, Any]:
        ctx.check_post(request)
        ctx.require_admin(request)
        body = await _read_json(request)
        count = body.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= 1000:
            raise HTTPException(422, "count must be an integer 1..1000")
        tokens = ctx.study(study_name).add_raters(count, str(body.get("label", ""))[:64])
        return {"tokens": tokens, "links": [f"/arena/{study_name}?token={t}" for t in tokens]}

    @app.post("/api/humaneval/prepare")
    async def api_prepare(request: Request) -> dict[str, Any]:
        """Admin: prepare a study from runs of this workspace in a background thread (diffusers folders
        by path only through the CLI: the web never opens a path a request names)."""
        ctx.check_post(request)
        ctx.require_admin(request)
        from opencanvas.humaneval.prepare import StudyPrompt

        body = await _read_json(request)
        try:
            name = check_name(str(body.get("name", "")))
        except StudyError as e:
            raise HTTPException(422, str(e)) from None
        models = body.get("models")
        if not isinstance(models, list) or len(models) < 2 or not all(isinstance(m, str) for m in models):
            raise HTTPException(422, "models must be a list of at least two run names")
        for m in models:
            _run_or_404(m)
        raw = body.get("prompts")
        if raw == "heldout":
            prompts: Any = "heldout"
        elif isinstance(raw, list) and 0 < len(raw) <= 10_000:
            prompts = [StudyPrompt(str(p)[:500]) if not isinstance(p, dict) else
                       StudyPrompt(str(p.get("prompt", ""))[:500], p.get("category"), p.get("challenge"))
                       for p in raw]
        else:
            raise HTTPException(422, 'prompts must be "heldout" or a list of 1..10000 prompts')
        try:
            options = {"n": None if body.get("n") is None else int(body["n"]), "seed": int(body.get("seed", 0)),
                       "steps": int(body.get("steps", 25)), "guidance": float(body.get("guidance", 7.5)),
                       "sampler": str(body.get("sampler", "dpmpp-2m"))}
        except (TypeError, ValueError):
            raise HTTPException(422, "n, seed and steps must be integers and guidance a number") from None
        return ctx.start_prepare(name, models, prompts, options)

    @app.get("/api/humaneval/prepare/{job_id}")
    def api_prepare_job(request: Request, job_id: str) -> dict[str, Any]:
        ctx.require_admin(request)
        job = ctx.prepare_jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no prepare job {job_id!r}")
        return job

    @app.post("/api/humaneval/{study_name}/export")
    async def api_export(request: Request, study_name: str) -> dict[str, Any]:
        ctx.check_post(request)
        ctx.require_admin(request)
        from opencanvas.humaneval.prepare import export_votes

        path = export_votes(ctx.ws, ctx.study(study_name).name)
        return {"path": ctx.ws.relative(path)}

    return app


def _file(path: Path, cache: bool = True) -> Response:
    media = gallery.SERVED_SUFFIXES.get(path.suffix.lower(), "application/octet-stream")
    return Response(path.read_bytes(), media_type=media,
                    headers={"cache-control": "private, max-age=3600" if cache else "no-store"})
