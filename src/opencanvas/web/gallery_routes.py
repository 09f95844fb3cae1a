"""Routes of the gallery (runs, cards, files) and of generation (jobs, nearest training images)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from opencanvas.humaneval.store import study_names
from opencanvas.web import gallery
from opencanvas.web.context import CARD_NAME, Context, file_response, read_json
from opencanvas.web.text import markdown_html


def register_gallery(app: FastAPI, ctx: Context) -> None:
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

    @app.get("/api/runs/{run}")
    def api_run(request: Request, run: str) -> dict[str, Any]:
        ctx.require_admin(request)
        return gallery.run_detail(ctx.ws, ctx.run_or_404(run))

    @app.get("/runs/{run}", response_class=HTMLResponse)
    def run_page(request: Request, run: str) -> Response:
        return ctx.render(request, "run.html", run=api_run(request, run))

    @app.get("/runs/{run}/cards/{name}")
    def card_page(request: Request, run: str, name: str) -> Response:
        ctx.require_admin(request)
        ctx.run_or_404(run)
        if not CARD_NAME.match(name):
            path = gallery.served_file(ctx.ws, run, f"cards/{name}")   # the card's own images
            if path is None:
                raise HTTPException(404, "no such file")
            return file_response(path)
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
        return file_response(path)

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

        body = await read_json(request)
        try:
            req = GenerateRequest(run=ctx.run_or_404(str(body.get("run", ""))),
                                  prompt=str(body.get("prompt", ""))[:500],
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

        index = ctx.generator.index_for(ctx.run_or_404(run))
        found = read(ctx.ws, index, i) if index is not None else None
        if found is None:
            raise HTTPException(404, "no such training image (generate from this run first)")
        data, ext = found
        return Response(data, media_type="image/png" if ext == "png" else "image/jpeg",
                        headers={"cache-control": "private, max-age=3600"})
