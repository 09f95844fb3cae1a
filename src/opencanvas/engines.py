"""How a data stage's per-shard function is distributed.

A stage is a pure function `fn(task) -> stats` over independent shard tasks.
This module runs such tasks in-process, on a local process pool
(`--workers N`), as one share of a SLURM-style job (`--rank R --world W`), or
on a Ray cluster (`--engine ray`, optional extra `opencanvas[ray]`): as tasks, or on
long-lived actors (`map_shards_on_actors`) when each worker must hold a model.
The function and its tasks must be picklable (module-level function,
dataclass tasks) for every engine but `local` with one worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar, get_args

T = TypeVar("T")
R = TypeVar("R")

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)


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
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
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


class _ShardActor(Generic[T, R]):
    """Ray actor body: runs `fn` on every task it is given, in one long-lived process.

    Whatever `fn` caches per process (a captioner's model) is built on the first task and kept.
    """

    def __init__(self, fn: Callable[[T], R]) -> None:
        self.fn = fn

    def run(self, task: T) -> R:
        return self.fn(task)


def map_shards_on_actors(fn: Callable[[T], R], tasks: Sequence[T], *, num_gpus: float = 0.0, num_cpus: float = 1.0,
                         actors: int | None = None) -> Iterator[R]:
    """Run `fn` over `tasks` on Ray actors, one per GPU (or CPU), yielding results as shards finish.

    Plain Ray GPU tasks are a poor fit for model-holding work: Ray retires a GPU task's worker
    after one call (`max_calls=1`, so the model would reload for every shard), and a reused
    worker may be handed another GPU than the one its model sits on. An actor holds its GPU
    and its model for its whole life. Connects to the cluster in RAY_ADDRESS (or starts a
    local one) unless Ray is already initialised; `actors` defaults to the cluster's GPUs
    (GPU jobs) or CPUs.
    """
    if not tasks:
        return
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise RuntimeError("--engine ray needs Ray: pip install 'opencanvas[ray]' (or ray[data])") from e
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    resources = ray.cluster_resources()
    if actors is None:
        actors = int(resources.get("GPU", 0) // num_gpus) if num_gpus else int(resources.get("CPU", 1) // num_cpus)
    if actors < 1:
        raise RuntimeError(f"the Ray cluster ({dict(resources)}) cannot host one actor needing "
                           f"{num_gpus} GPU and {num_cpus} CPU: add GPUs or pass --device cpu")
    actor_class = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(_ShardActor)
    handles: list[Any] = [actor_class.remote(fn) for _ in range(min(actors, len(tasks)))]
    pool = ActorPool(handles)
    try:
        yield from pool.map_unordered(lambda actor, task: actor.run.remote(task), list(tasks))
    finally:
        for handle in handles:  # free the GPUs (and models) now, not when the driver exits
            ray.kill(handle)
