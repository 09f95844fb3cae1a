"""Routes of the human-evaluation arena: invites, the pair/vote API, images, results, admin actions."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from opencanvas.humaneval.store import CHOICES, QUESTIONS, Study, StudyError, check_name
from opencanvas.web.context import ADMIN_COOKIE, Context, file_response, read_json


def _pair_json(study: Study, pair: Any) -> dict[str, Any]:
    return {"pair_id": pair.id, "prompt": pair.prompt,
            "left_url": f"/humaneval/{study.name}/images/{pair.left_image}.png",
            "right_url": f"/humaneval/{study.name}/images/{pair.right_image}.png",
            "questions": [{"id": q, "text": QUESTIONS.get(q, q)} for q in study.questions],
            "choices": list(CHOICES)}


def _results(study: Study) -> dict[str, Any]:
    from opencanvas.humaneval.report import study_results

    return study_results(study)


def register_arena(app: FastAPI, ctx: Context) -> None:
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
        body = await read_json(request)
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
        return file_response(path)

    @app.get("/api/humaneval/{study_name}/results")
    def api_results(request: Request, study_name: str) -> dict[str, Any]:
        ctx.require_admin(request)
        return _results(ctx.study(study_name))

    @app.get("/humaneval/{study_name}/results", response_class=HTMLResponse)
    def results_page(request: Request, study_name: str) -> Response:
        results = api_results(request, study_name)
        return ctx.render(request, "results.html", study=study_name, results=results)

    @app.get("/humaneval/{study_name}/results.png")
    def results_png(request: Request, study_name: str) -> Response:
        from opencanvas.humaneval.report import results_plot

        results = api_results(request, study_name)
        path = results_plot(results, ctx.study(study_name).path.with_suffix("") / "results.png")
        return file_response(path, cache=False)

    @app.post("/api/humaneval/{study_name}/raters")
    async def api_add_raters(request: Request, study_name: str) -> dict[str, Any]:
        ctx.check_post(request)
        ctx.require_admin(request)
        body = await read_json(request)
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

        body = await read_json(request)
        try:
            name = check_name(str(body.get("name", "")))
        except StudyError as e:
            raise HTTPException(422, str(e)) from None
        models = body.get("models")
        if not isinstance(models, list) or len(models) < 2 or not all(isinstance(m, str) for m in models):
            raise HTTPException(422, "models must be a list of at least two run names")
        for m in models:
            ctx.run_or_404(m)
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
