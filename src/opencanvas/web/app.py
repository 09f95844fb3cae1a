"""The FastAPI app: pages (Jinja2, autoescaped) over a JSON API, behind the security middleware.
Who may do what is in `context.py`; the routes are in `gallery_routes.py` and `arena_routes.py`."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from opencanvas.web.arena_routes import register_arena
from opencanvas.web.context import HERE, Context, WebConfig
from opencanvas.web.gallery_routes import register_gallery
from opencanvas.web.security import SecurityMiddleware

__all__ = ["WebConfig", "create_app"]


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

    register_gallery(app, ctx)
    register_arena(app, ctx)
    return app
