"""The polite client against a real local HTTP server with faults (127.0.0.1 only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from opencanvas.fetch.addresses import blocked_reason
from opencanvas.fetch.http import FetchFailure, HttpConfig, PoliteClient
from opencanvas.fetch.robots import RobotsCache, RobotsUnavailable, x_robots_opt_out
from opencanvas.fetch.testing import ServerState, image_server, noise_image

JPEG = noise_image(0, (64, 64))


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState(images={"a.jpg": (JPEG, "image/jpeg")}, slow_seconds=1.0, retry_after=1,
                        oversize_bytes=2 * 1024 * 1024)
    with image_server(state) as running:
        yield running


def client(**kw) -> PoliteClient:
    base = dict(timeout=0.3, retries=2, backoff=0.01, max_backoff=5.0, max_bytes=1024 * 1024,
                allow_private_addresses=True, domain_rps=0, contact="https://example.org/contact")
    return PoliteClient(HttpConfig(**{**base, **kw}))


def failure(c: PoliteClient, url: str) -> FetchFailure:
    with pytest.raises(FetchFailure) as err:
        c.fetch(url)
    return err.value


def test_good_image_with_honest_user_agent(server) -> None:
    url, state = server
    got = client().fetch(f"{url}/img/a.jpg")
    assert got.data == JPEG and got.content_type == "image/jpeg" and got.attempts == 1
    assert any(a.startswith("OpenCanvas/") and "(+https://example.org/contact)" in a for a in state.user_agents)


def test_slow_response_times_out_after_retries(server) -> None:
    url, state = server
    f = failure(client(retries=1), f"{url}/slow/a.jpg")
    assert (f.status, f.reason) == ("failed", "timeout")
    assert state.hits["/slow/a.jpg"] == 2


def test_429_honours_retry_after(server) -> None:
    url, state = server
    start = time.monotonic()
    got = client().fetch(f"{url}/ratelimited/a.jpg")
    assert got.data == JPEG and got.attempts == 2
    assert time.monotonic() - start >= 0.95  # Retry-After: 1
    # A Retry-After beyond what we agree to wait is a failure with the reason, not a hang.
    state.retry_after = 3600
    f = failure(client(), f"{url}/ratelimited/a.jpg?again")
    assert f.reason.startswith("http-429: asked to wait 3600 s")


def test_500_then_200_is_retried(server) -> None:
    url, state = server
    assert client().fetch(f"{url}/flaky/a.jpg").attempts == 2
    assert state.hits["/flaky/a.jpg"] == 2
    state.flaky_failures = 10
    f = failure(client(), f"{url}/flaky/a.jpg?x")
    assert f.reason == "http-500" and state.hits["/flaky/a.jpg?x"] == 3  # 1 + 2 retries


def test_truncated_body_fails_after_retries(server) -> None:
    url, state = server
    f = failure(client(), f"{url}/truncated/a.jpg")
    assert f.reason == f"truncated-body: got {len(JPEG) // 2} of {len(JPEG)} bytes"
    assert state.hits["/truncated/a.jpg"] == 3


def test_redirect_chain_followed_up_to_cap(server) -> None:
    url, _ = server
    got = client(max_redirects=5).fetch(f"{url}/redirect/3/a.jpg")
    assert got.data == JPEG and got.final_url == f"{url}/img/a.jpg"
    f = failure(client(max_redirects=5), f"{url}/redirect/6/a.jpg")
    assert f.reason == "too-many-redirects: more than 5"


def test_opt_outs_are_skips_that_name_the_signal(server) -> None:
    url, state = server
    f = failure(client(), f"{url}/noai/a.jpg")
    assert (f.status, f.reason) == ("skipped", "x-robots-tag: noai")
    f = failure(client(), f"{url}/private/a.jpg")
    assert (f.status, f.reason) == ("skipped", "robots-txt: disallowed for OpenCanvas")
    assert "/private/a.jpg" not in state.hits  # robots.txt is read before, not after
    assert client(respect_robots=False).fetch(f"{url}/private/a.jpg").data == JPEG


def test_robots_txt_is_fetched_once_per_domain(server) -> None:
    url, state = server
    c = client()
    for i in range(5):
        c.fetch(f"{url}/img/a.jpg?{i}")
    assert state.hits["/robots.txt"] == 1


def test_size_cap_and_content_type(server) -> None:
    url, _ = server
    f = failure(client(max_bytes=1024 * 1024), f"{url}/oversize/a.jpg")
    assert f.reason == f"too-large: body > {1024 * 1024} bytes"
    f = failure(client(max_bytes=100), f"{url}/img/a.jpg")
    assert f.reason == f"too-large: content-length {len(JPEG)} > 100"
    assert failure(client(), f"{url}/html/a.jpg").reason == "bad-content-type: text/html"
    assert failure(client(), f"{url}/missing/a.jpg").reason == "http-404"
    assert failure(client(), "ftp://example.org/a.jpg").reason.startswith("bad-url")


def test_loopback_refused_unless_allowed(server) -> None:
    url, state = server
    hits_before = sum(state.hits.values())
    f = failure(client(allow_private_addresses=False), f"{url}/img/a.jpg")
    assert f.status == "failed" and f.reason.startswith("loopback-address: 127.0.0.1 resolves to 127.0.0.1")
    f = failure(client(allow_private_addresses=False), url.replace("127.0.0.1", "localhost") + "/img/a.jpg")
    assert "loopback-address" in f.reason
    assert sum(state.hits.values()) == hits_before  # not even robots.txt was requested


@pytest.mark.parametrize("ip, why", [
    ("169.254.169.254", "link-local"),   # cloud metadata endpoint
    ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("100.100.100.200", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("fd00:ec2::254", "private"), ("0.0.0.0", "reserved"),
    ("8.8.8.8", None), ("2606:4700:4700::1111", None),
])
def test_blocked_reason(ip: str, why: str | None) -> None:
    assert blocked_reason(ip) == why


def test_per_domain_concurrency_and_rate(server) -> None:
    url, state = server
    state.delay = 0.05
    c = client(domain_concurrency=2)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(c.fetch, [f"{url}/img/a.jpg?c{i}" for i in range(12)]))
    assert state.max_active <= 2  # robots.txt is fetched first, alone
    state.delay = 0.0
    c = client(domain_rps=20.0)
    c.fetch(f"{url}/img/a.jpg?warm")
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(c.fetch, [f"{url}/img/a.jpg?r{i}" for i in range(10)]))
    assert time.monotonic() - start >= 0.45  # 10 request starts at 20/s


@pytest.mark.parametrize("values, expected", [
    (["noai, noimageai"], "noai"), (["noimageindex"], "noimageindex"), (["none"], "none"),
    (["googlebot: noindex"], None), (["OpenCanvas: noindex"], "noindex"),
    (["max-image-preview:large", "noimageai"], "noimageai"), (["index, follow"], None), ([], None),
])
def test_x_robots_tag_parsing(values: list[str], expected: str | None) -> None:
    assert x_robots_opt_out(values, "OpenCanvas") == expected


@pytest.mark.parametrize("reply, allowed", [
    ((404, b""), None),                                   # RFC 9309: no robots.txt -> no rules
    ((503, b""), "robots-txt: unreachable (HTTP 503)"),   # server error -> complete disallow
    (RobotsUnavailable("timeout"), "robots-txt: unreachable (timeout)"),
    ((200, b"User-agent: OpenCanvas\nDisallow: /\n\nUser-agent: *\nAllow: /\n"),
     "robots-txt: disallowed for OpenCanvas"),
    ((200, b"User-agent: *\nCrawl-delay: 2\nDisallow: /private/\n"), None),
])
def test_robots_cache_follows_rfc_9309(reply, allowed) -> None:
    calls = []

    def fetch_robots(url: str) -> tuple[int, bytes]:
        calls.append(url)
        if isinstance(reply, Exception):
            raise reply
        return reply

    cache = RobotsCache(fetch_robots, "OpenCanvas")
    assert cache.check("https://example.org", "https://example.org/a.jpg") == allowed
    assert cache.check("https://example.org", "https://example.org/b.jpg") == allowed
    assert calls == ["https://example.org/robots.txt"]  # cached per origin
    if b"Crawl-delay" in (reply[1] if isinstance(reply, tuple) else b""):
        assert cache.crawl_delay("https://example.org") == 2.0
