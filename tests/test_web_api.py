"""The web app through its HTTP interface (FastAPI's TestClient): the arena's JSON API, generation with
PNG metadata and attributed nearest training images, and the security rules (CSP, escaping, no path
traversal, tokens off localhost, CSRF, body size)."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from opencanvas.humaneval.prepare import prepare
from opencanvas.humaneval.store import open_study
from opencanvas.sample.pngmeta import REQUIRED_KEYS
from opencanvas.untrusted import safe_url
from opencanvas.web.app import WebConfig, create_app
from opencanvas.web.security import Secrets
from opencanvas.workspace import Workspace
from tests.web_workspace import EVIL_TITLE, shared_web_workspace

LOCAL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    ws, clip = shared_web_workspace(tmp_path_factory)
    prepare(ws, "api", ["tiny-a", "tiny-b"], ws.root / "prompts.tsv", steps=2, sampler="euler")
    return ws, clip


def _client(ws: Workspace, clip: Path | None = None, host: str = "127.0.0.1", secrets: Secrets | None = None,
            **kw: object) -> TestClient:
    config = WebConfig(ws=ws, host=host, clip=str(clip) if clip else None, secrets=secrets or Secrets(), **kw)
    return TestClient(create_app(config), base_url=f"http://{host}:8000")


def _csrf(client: TestClient, page: str = "/") -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get(page).text).group(1)


def test_arena_api_next_vote_results(site: tuple[Workspace, Path]) -> None:
    ws, _ = site
    client = _client(ws)
    token = open_study(ws, "api").add_raters(1)[0]
    auth = {"Authorization": f"Bearer {token}"}
    seen = set()
    while (r := client.get("/api/humaneval/api/next", headers=auth)).status_code == 200:
        pair = r.json()
        assert set(pair) >= {"pair_id", "prompt", "left_url", "right_url", "questions"}
        assert "tiny-a" not in json.dumps(pair) and "tiny-b" not in json.dumps(pair)   # models never named
        assert client.get(pair["left_url"], headers=auth).headers["content-type"] == "image/png"
        for q in pair["questions"]:
            v = client.post("/api/humaneval/api/votes", headers=auth,
                            json={"pair_id": pair["pair_id"], "question": q["id"], "choice": "left"})
            assert v.status_code == 200 and v.json()["ok"], v.text
        seen.add(pair["pair_id"])
        assert len(seen) <= 4
    assert r.status_code == 204 and len(seen) == 4
    bad = client.post("/api/humaneval/api/votes", headers=auth, json={"pair_id": pair["pair_id"],
                                                                     "question": "overall", "choice": "up"})
    assert bad.status_code == 422 and "choice must be" in bad.json()["error"]
    results = client.get("/api/humaneval/api/results").json()
    assert results["questions"]["overall"]["votes"] == 4
    assert {r["model"] for r in results["questions"]["overall"]["per_model"]} == {"tiny-a", "tiny-b"}
    page = client.get("/humaneval/api/results")
    assert page.status_code == 200 and "Bradley" in page.text and "Wilson" in page.text
    assert client.get("/humaneval/api/results.png").headers["content-type"] == "image/png"


def test_run_page_shows_eval_tables_and_plots(site: tuple[Workspace, Path]) -> None:
    ws, _ = site
    root = ws.run_dir("tiny-b") / "eval" / "e1"
    root.mkdir(parents=True)
    report = {"prompts": {"source": f"prompts {EVIL_TITLE}", "count": 3}, "clip_model": "clip", "features": "clip",
              "fd_metric": "FD-CLIP", "kid_metric": "KID-CLIP",
              "rows": [{"guidance": 0.0, "baseline": True, "clip_score": 21.5, "FD-CLIP": 0.61, "KID-CLIP": 0.02,
                        "precision": 0.5, "recall": 0.25},
                       {"guidance": 3.0, "baseline": False, "clip_score": 27.25, "FD-CLIP": 0.42, "KID-CLIP": 0.01,
                        "precision": 0.75, "recall": 0.5}]}
    (root / "report.json").write_text(json.dumps(report))
    Image.new("RGB", (8, 8)).save(root / "tradeoff.png")
    client = _client(ws)
    page = client.get("/runs/tiny-b").text
    assert "(unconditional)" in page and "27.25" in page and "FD-CLIP" in page
    assert "&lt;script&gt;window.__pwned" in page and "<script>window" not in page
    assert client.get("/files/runs/tiny-b/eval/e1/tradeoff.png").headers["content-type"] == "image/png"
    detail = client.get("/api/runs/tiny-b").json()
    assert detail["evals"][0]["plots"] == ["eval/e1/tradeoff.png"] and len(detail["curve"]["points"]) == 2


def test_pages_have_csp_and_escape_untrusted_text(site: tuple[Workspace, Path]) -> None:
    ws, _ = site
    client = _client(ws)
    cards = ws.run_dir("tiny-a") / "cards"
    cards.mkdir(exist_ok=True)
    (cards / "MODEL_CARD.md").write_text(f"# Card\n\nTitle: {EVIL_TITLE}\n\n[author](javascript:alert(1))\n")
    for url in ("/", "/runs/tiny-a", "/generate", "/arena/api", "/humaneval/api/results",
                "/runs/tiny-a/cards/MODEL_CARD.md"):
        r = client.get(url)
        assert r.status_code == 200, url
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "http" not in csp, csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"<script>(?!</script>)", r.text.replace('<script src="', "")), url  # no inline script
    card = client.get("/runs/tiny-a/cards/MODEL_CARD.md").text
    assert "&lt;script&gt;window.__pwned" in card and "<script>window" not in card and 'href="javascript' not in card
    assert client.get("/api/humaneval/api/results").headers["content-security-policy"]
    assert safe_url("javascript:alert(1)") is None and safe_url("https://example.org/a") == "https://example.org/a"
    assert safe_url("https://x.org/\"onmouseover=") == "https://x.org/%22onmouseover="  # quote encoded, inert
    assert safe_url("//evil.org") is None


@pytest.mark.parametrize("url", [
    "/files/runs/tiny-a/../../opencanvas.toml", "/files/runs/tiny-a/%2e%2e/%2e%2e/sd2-tiny/vae/config.json",
    "/files/runs/tiny-a/samples/../config.json", "/files/runs/tiny-a/checkpoints/x.png",
    "/files/runs/..%2f..%2fetc/passwd", "/files/runs/tiny-a/samples/%2F..%2F..%2Fconfig.json",
    "/humaneval/api/images/..%2f..%2fapi.sqlite", "/humaneval/..%2fapi/images/x.png",
    "/static/../app.py", "/static/%2e%2e/app.py", "/runs/tiny-a/cards/..%2fconfig.json",
    "/training-images/tiny-a/-1", "/training-images/..%2ftiny-a/0",
])
def test_no_path_traversal(site: tuple[Workspace, Path], url: str) -> None:
    ws, _ = site
    r = _client(ws).get(url)
    assert r.status_code in (404, 422), (url, r.status_code)
    assert b"images" not in r.content[:20] and b"SQLite" not in r.content


def test_links_out_of_served_folders_are_refused(site: tuple[Workspace, Path]) -> None:
    ws, _ = site
    link = ws.run_dir("tiny-b") / "samples" / "escape.png"
    link.symlink_to(ws.root / "sd2-tiny" / "vae" / "config.json")
    try:
        assert _client(ws).get("/files/runs/tiny-b/samples/escape.png").status_code == 404
    finally:
        link.unlink()


def test_csrf_origin_and_body_limit(site: tuple[Workspace, Path]) -> None:
    ws, _ = site
    client = _client(ws, max_body=2048)
    pair = client.get("/api/humaneval/api/next")   # the local rater (no token on 127.0.0.1)
    assert pair.status_code == 200
    assert client.get("/api/humaneval/api/next", headers={"Authorization": "Bearer wrong"}).status_code == 401
    body = {"pair_id": pair.json()["pair_id"], "question": "overall", "choice": "tie"}
    assert client.post("/api/humaneval/api/votes", json=body).status_code == 403
    csrf = _csrf(client, "/arena/api")
    assert client.post("/api/humaneval/api/votes", json=body, headers={"x-csrf-token": "0" * 64}).status_code == 403
    assert client.post("/api/humaneval/api/votes", json=body,
                       headers={"x-csrf-token": csrf, "origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/humaneval/api/votes", json=body, headers={"x-csrf-token": csrf}).status_code == 200
    big = client.post("/api/humaneval/api/votes", content=b"{" + b" " * 4096 + b"}",
                      headers={"x-csrf-token": csrf, "content-type": "application/json"})
    assert big.status_code == 413

    def chunks():   # no Content-Length: the limit counts the bytes as they arrive
        for _ in range(8):
            yield b" " * 1024

    chunked = client.post("/api/humaneval/api/votes", content=chunks(),
                          headers={"x-csrf-token": csrf, "content-type": "application/json"})
    assert chunked.status_code == 413


def test_tokens_required_off_localhost(site: tuple[Workspace, Path]) -> None:
    ws, _ = site
    secrets = Secrets()
    client = _client(ws, host="0.0.0.0", secrets=secrets)
    token = open_study(ws, "api").add_raters(1)[0]
    for url in ("/api/humaneval/api/next", "/api/runs", "/api/humaneval/api/results", "/generate"):
        assert client.get(url).status_code == 401, url
    assert client.get("/arena/api").status_code == 401
    rater = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/humaneval/api/next", headers=rater).status_code == 200
    assert client.get("/api/humaneval/api/results", headers=rater).status_code == 401   # results are the admin's
    assert client.post("/api/humaneval/api/raters", headers=rater, json={"count": 1}).status_code == 401
    admin = {"Authorization": f"Bearer {secrets.admin_token}"}
    assert client.get("/api/humaneval/api/results", headers=admin).status_code == 200
    made = client.post("/api/humaneval/api/raters", headers=admin, json={"count": 2})
    assert made.status_code == 200 and len(made.json()["tokens"]) == 2
    # An invite link becomes an HttpOnly cookie and a redirect to the bare page.
    invite = client.get(f"/arena/api?token={made.json()['tokens'][0]}", follow_redirects=False)
    assert invite.status_code == 303 and invite.headers["location"] == "/arena/api"
    assert "httponly" in invite.headers["set-cookie"].lower()
    assert client.get("/arena/api").status_code == 200
    assert client.get("/arena/api?token=wrong", follow_redirects=False).status_code == 401
    assert _client(ws, host="0.0.0.0").get(f"/admin?token={secrets.admin_token}").status_code == 401  # other server
    login = client.get(f"/admin?token={secrets.admin_token}", follow_redirects=False)
    assert login.status_code == 303 and client.get("/api/runs").status_code == 200


def test_admin_prepares_a_study_from_the_web(site: tuple[Workspace, Path]) -> None:
    ws, _ = site
    secrets = Secrets()
    client = _client(ws, host="0.0.0.0", secrets=secrets)
    body = {"name": "webmade", "models": ["tiny-a", "tiny-b"], "steps": 2, "sampler": "euler",
            "prompts": [{"prompt": "a red circle", "category": "Shapes"}, "a blue square", "a green triangle"]}
    assert client.post("/api/humaneval/prepare", json=body).status_code == 403   # no bearer, no CSRF token
    token = open_study(ws, "api").add_raters(1)[0]
    assert client.post("/api/humaneval/prepare", json=body,
                       headers={"Authorization": f"Bearer {token}"}).status_code == 401   # raters cannot
    admin = {"Authorization": f"Bearer {secrets.admin_token}"}
    bad = client.post("/api/humaneval/prepare", headers=admin, json={**body, "models": ["tiny-a", "/etc"]})
    assert bad.status_code == 404                                   # runs only: no path from a request
    job = client.post("/api/humaneval/prepare", headers=admin, json=body)
    assert job.status_code == 200, job.text
    for _ in range(600):
        state = client.get(f"/api/humaneval/prepare/{job.json()['id']}", headers=admin).json()
        if state["status"] != "running":
            break
        time.sleep(0.05)
    assert state["status"] == "done", state["error"]
    assert state["summary"]["pairs"] == 3 and open_study(ws, "webmade").counts()["images"] == 6


def test_generate_writes_metadata_and_finds_attributed_neighbours(site: tuple[Workspace, Path]) -> None:
    ws, clip = site
    client = _client(ws, clip)
    csrf = _csrf(client, "/generate")
    job = client.post("/api/generate", headers={"x-csrf-token": csrf},
                      json={"run": "tiny-a", "prompt": "a red circle", "steps": 3, "seed": 5, "guidance": 3})
    assert job.status_code == 200, job.text
    progress = []
    for _ in range(600):
        state = client.get(f"/api/generate/{job.json()['id']}").json()
        progress.append(state["progress"])
        if state["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert state["status"] == "done", state["error"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    png = client.get(state["image_url"])
    meta = read_png_meta_bytes(png.content)
    assert set(REQUIRED_KEYS) <= set(meta) and meta["prompt"] == "a red circle" and meta["seed"] == 5
    assert meta["model"] == "tiny-a" and meta["license_policy"] == "commercial"
    nb = state["neighbours"]
    assert len(nb["clip"]) == 4 and len(nb["phash"]) == 4 and nb["clip_model"] == str(clip)
    first = nb["phash"][0]
    assert 0 <= first["distance"] <= 64 and -1 <= nb["clip"][0]["cosine"] <= 1
    assert EVIL_TITLE in first["attribution"]["title"] and first["attribution"]["license_id"] == "cc0"
    thumb = client.get(first["thumb_url"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    index = ws.run_dir("tiny-a") / "web" / "neighbours" / "index.json"
    built = index.stat().st_mtime_ns
    again = client.post("/api/generate", headers={"x-csrf-token": csrf},
                        json={"run": "tiny-a", "prompt": "a blue square", "steps": 2, "seed": 1})
    for _ in range(600):
        if client.get(f"/api/generate/{again.json()['id']}").json()["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert index.stat().st_mtime_ns == built   # the feature index is built once per run and cached
    fresh = _client(ws, clip)                  # a restarted server reads the cache instead of rebuilding
    job = fresh.post("/api/generate", headers={"x-csrf-token": _csrf(fresh, "/generate")},
                     json={"run": "tiny-a", "prompt": "a red circle", "steps": 1, "seed": 2})
    for _ in range(600):
        if fresh.get(f"/api/generate/{job.json()['id']}").json()["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert index.stat().st_mtime_ns == built
    bad = client.post("/api/generate", headers={"x-csrf-token": csrf}, json={"run": "tiny-a", "steps": 10_000})
    assert bad.status_code == 422 and "steps must be" in bad.json()["error"]
    assert client.post("/api/generate", headers={"x-csrf-token": csrf}, json={"run": "nope"}).status_code == 404


def read_png_meta_bytes(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as im:
        return json.loads(im.text["opencanvas"])

