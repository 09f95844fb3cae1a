"""Captioning on a Ray cluster: one long-lived actor per GPU, shards streamed to whichever is free.

Plain Ray GPU tasks are a poor fit: Ray retires a GPU task's worker after one
call (`max_calls=1`, so the model would reload for every shard), and a reused
worker may be handed another GPU than the one its model sits on. An actor holds
its GPU and its model for its whole life, so each actor loads the captioner
once and runs `caption_shard`, the same per-shard function as the local
engine, on every shard it is given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from opencanvas.caption.stage import ShardResult, ShardTask, caption_shard


class ShardCaptioner:
    """Ray actor body: the captioner is built on the first shard and cached in this process."""

    def run(self, task: ShardTask) -> ShardResult:
        return caption_shard(task)


def map_shards_on_actors(tasks: Sequence[ShardTask], *, num_gpus: float = 0.0, num_cpus: float = 1.0,
                         actors: int | None = None) -> Iterator[ShardResult]:
    """Run `caption_shard` over `tasks` on Ray actors, yielding results as shards finish.

    Connects to the cluster in RAY_ADDRESS (or starts a local one) unless Ray is
    already initialised. `actors` defaults to the cluster's GPUs (GPU jobs) or CPUs.
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
        raise RuntimeError(f"the Ray cluster ({dict(resources)}) cannot host one captioner actor needing "
                           f"{num_gpus} GPU and {num_cpus} CPU: add GPUs or pass --device cpu")
    actor_class = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(ShardCaptioner)
    handles = [actor_class.remote() for _ in range(min(actors, len(tasks)))]
    pool = ActorPool(handles)
    try:
        yield from pool.map_unordered(lambda actor, task: actor.run.remote(task), list(tasks))
    finally:
        for handle in handles:  # free the GPUs (and models) now, not when the driver exits
            ray.kill(handle)
