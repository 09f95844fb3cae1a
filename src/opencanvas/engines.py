"""How a data stage's per-shard function is distributed.

A stage is a pure function `fn(task) -> stats` over independent shard tasks.
This module runs such tasks in-process, on a local process pool
(`--workers N`), as one share of a SLURM-style job (`--rank R --world W`), or
on a Ray cluster (`--engine ray`, optional extra `opencanvas[ray]`).
The function and its tasks must be picklable (module-level function,
dataclass tasks) for every engine but `local` with one worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Engine = Literal["local", "ray"]


def shard_share(tasks: Sequence[T], rank: int = 0, world: int = 1) -> list[T]:
    """The tasks of one rank: a strided split, so every task has exactly one owner."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank} world={world}")
    return list(tasks[rank::world])


def map_shards(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int = 1,
    engine: Engine = "local",
    ray_options: dict | None = None,
) -> Iterator[R]:
    """Run `fn` on every task, yielding results as they finish (order not kept)."""
    if not tasks:
        return
    if engine == "ray":
        yield from _map_ray(fn, tasks, ray_options or {})
        return
    if engine != "local":
        raise ValueError(f"unknown engine {engine!r}: use 'local' or 'ray'")
    if workers <= 1:
        for task in tasks:
            yield fn(task)
        return
    # 'spawn' keeps worker processes free of the parent's threads (torch, DuckDB).
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(fn, t) for t in tasks]
        for fut in cf.as_completed(futures):
            yield fut.result()


def _map_ray(fn: Callable[[T], R], tasks: Sequence[T], options: dict) -> Iterator[R]:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise RuntimeError(
            "--engine ray needs Ray: pip install 'opencanvas[ray]' (or ray[data])"
        ) from e
    if not ray.is_initialized():
        ray.init(address=options.pop("address", None), include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    remote = ray.remote(**options)(fn) if options else ray.remote(fn)
    pending = [remote.remote(t) for t in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
