"""LatentLoader: deterministic, rank-partitioned, exactly resumable batches of latents.

An epoch is a pure function of (seed, epoch) and the latent set:

1. each bucket's record indices are permuted and cut into full batches (the
   remainder of each bucket, a different random tail every epoch, is dropped:
   a batch never mixes buckets, so its tensors have one shape);
2. the batches of all buckets are permuted together;
3. the batch list is cut to a multiple of `world`; global step s is batches
   [s*world, (s+1)*world), and rank r takes batch s*world + r, i.e. the strided
   share batches[r::world]. Ranks are disjoint and have equal step counts.

Without --buckets there is one bucket and this is a plain shuffled epoch.
Progress is counted in samples seen by all ranks together
(`position = (epoch, samples_seen)`, samples_seen = steps * world * batch_size),
which is what training counts as images seen, so a checkpoint's position
resumes the exact remaining batches: `LatentLoader(..., epoch=e, start=s)`.

The caption of record i in epoch e is drawn among the captioners that gave it
one by a hash of (seed, e, i), so it is the same on every rank, worker and resume:
uniformly, or with a caption mix (per-captioner weights, e.g. 5% metadata and 95%
BLIP-2 as in DALL-E 3) renormalised over the captions the record has.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from opencanvas.encode.store import LatentSet

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014): a well-mixed uint64 per input (wraps on purpose)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def caption_slots(available: np.ndarray, seed: int, epoch: int, indices: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """(B,) captioner slot per record, drawn among its available ones; -1 if it has none.

    available: (B, K) bool for the records `indices` (B,).
    weights: (K,) non-negative per-captioner weights (a caption mix), or None for a uniform draw.
    With weights, the draw is renormalised over a record's available captioners; a captioner with
    weight 0 is never drawn, so a record with only such captions gets -1 (the empty prompt).
    """
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray(np.uint64(seed & (2**64 - 1)) * _GOLDEN + np.uint64(epoch)))
        h = _splitmix64(h ^ np.asarray(indices, dtype=np.uint64))
    if weights is not None:
        return _weighted_slots(available, np.asarray(weights, dtype=np.float64), h)
    count = available.sum(axis=1)
    choice = (h % np.maximum(count, 1).astype(np.uint64)).astype(np.int64)  # (B,)
    # Slot of the choice-th available captioner: first column where the running count exceeds it.
    slots = np.argmax(np.cumsum(available, axis=1) > choice[:, None], axis=1)
    return np.where(count > 0, slots, -1)


def _weighted_slots(available: np.ndarray, weights: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one slot per row from `available * weights`, with u from the hash `h`."""
    mass = available * weights[None, :]  # (B, K)
    cdf = np.cumsum(mass, axis=1)
    total = cdf[:, -1]
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 * total  # uniform in [0, total), (B,)
    # First slot whose running mass exceeds u: strict, so a zero-weight slot is never picked.
    slots = np.argmax(cdf > u[:, None], axis=1)
    return np.where(total > 0, slots, -1)


def training_indices(latent_set: LatentSet, holdout: float = 0.0,
                     keys: frozenset[str] | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Each bucket's record indices, less the held-out split (key hash fraction < `holdout`).

    The split is the one the components and `eval --prompts heldout` use
    (`splits.key_fraction`), so held-out prompts are never trained on.
    `keys`, when given, keeps only those records (a study's data fraction reads one shared latent set).
    """
    buckets = latent_set.bucket_indices()
    if holdout <= 0 and keys is None:
        return buckets
    from opencanvas.splits import key_fraction

    all_keys = latent_set.keys()

    def kept(key: str) -> bool:
        return (keys is None or key in keys) and (holdout <= 0 or key_fraction(key) >= holdout)

    return {b: ix[np.array([kept(all_keys[i]) for i in ix], dtype=bool)] for b, ix in buckets.items()}


def epoch_batches(latent_set: LatentSet, batch_size: int, seed: int, epoch: int,
                  indices: dict[tuple[int, int], np.ndarray] | None = None) -> list[np.ndarray]:
    """Every full batch of one epoch in global order (before the cut to a multiple of world)."""
    rng = np.random.default_rng([seed, epoch])
    batches: list[np.ndarray] = []
    by_bucket = indices if indices is not None else latent_set.bucket_indices()
    for _, bucket in sorted(by_bucket.items()):
        perm = bucket[rng.permutation(len(bucket))]
        n = len(perm) // batch_size * batch_size
        # Ascending within a batch (order inside a batch does not matter to SGD):
        # the store then reads each shard's rows in one forward sweep.
        batches.extend(np.sort(perm[:n].reshape(-1, batch_size), axis=1))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


class LatentLoader:
    """Batches {"mean", "std", "text", "mask", "keys"} of a LatentSet as torch tensors.

    mean/std (B, C, h, w) fp16, text (B, L, D) fp16, mask (B, L) bool, keys list[str], and the
    set's other arrays where it has them (text2, mask2, pooled, pooled2, image: see LatentSet.gather).
    Iterating yields the remaining batches of the current epoch, then moves to the
    next epoch, so `for batch in loader` may be repeated for as many epochs as needed.
    `holdout` > 0 leaves out the held-out split, and `keys` keeps only those records (see `training_indices`).
    `caption_weights` (K,), one per captioner of the set, replaces the uniform caption draw (see `caption_slots`).
    `captions_per_record` S > 0 gives every record its first S captioner slots at once (multi-caption
    conditioning): text (B, S, L, D), mask (B, S, L), the empty prompt where a caption is missing.
    `workers` > 0 gathers batches ahead on that many threads (memory-map copies
    release the GIL, and threads avoid pickling batches between processes).
    """

    def __init__(self, latent_set: LatentSet, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 epoch: int = 0, start: int = 0, workers: int = 0, prefetch: int = 4, holdout: float = 0.0,
                 keys: frozenset[str] | None = None, caption_weights: np.ndarray | None = None,
                 captions_per_record: int = 0) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank} world={world}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.latent_set = latent_set
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.workers, self.prefetch = workers, max(1, prefetch)
        k = len(latent_set.meta["captioners"])
        if caption_weights is not None and np.shape(caption_weights) != (k,):
            raise ValueError(f"caption_weights needs one weight per captioner of the set ({k}), "
                             f"got shape {np.shape(caption_weights)}")
        self.caption_weights = caption_weights
        if not 0 <= captions_per_record <= k:
            raise ValueError(f"captions_per_record must be in 0..{k} (the set's captioners), got {captions_per_record}")
        self.captions_per_record = captions_per_record
        self.indices = training_indices(latent_set, holdout, keys)
        full_batches = sum(len(ix) // batch_size for ix in self.indices.values())
        self.steps_per_epoch = full_batches // world
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(latent_set)} records give no full step of {world} rank(s) x batch {batch_size} "
                "(a batch never mixes buckets): lower --batch or encode more images")
        self.samples_per_epoch = self.steps_per_epoch * world * batch_size
        self._epoch, self._seen = 0, 0
        self.set_position(epoch, start)

    # ---- position -------------------------------------------------------------------
    @property
    def position(self) -> tuple[int, int]:
        """(epoch, samples seen in it by all ranks), counting every batch already yielded."""
        return self._epoch, self._seen

    def set_position(self, epoch: int, start: int = 0) -> None:
        step = self.world * self.batch_size
        if epoch < 0 or start < 0 or start % step:
            raise ValueError(f"start={start} must be a non-negative multiple of world x batch_size = {step}")
        epoch, start = epoch + start // self.samples_per_epoch, start % self.samples_per_epoch
        self._epoch, self._seen = epoch, start

    def __len__(self) -> int:
        """Steps left in the current epoch."""
        return self.steps_per_epoch - self._seen // (self.world * self.batch_size)

    # ---- batches --------------------------------------------------------------------
    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches (record indices, (B,) each) of `epoch`, in order."""
        batches = epoch_batches(self.latent_set, self.batch_size, self.seed, epoch, self.indices)
        return batches[: self.steps_per_epoch * self.world][self.rank :: self.world]

    def _load(self, indices: np.ndarray, epoch: int, out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        import torch

        available = self.latent_set.available_captions()[indices]  # (B, K)
        if self.captions_per_record:  # multi-caption: the first S captioner slots, -1 where a caption is missing
            s = self.captions_per_record
            slots = np.where(available[:, :s], np.arange(s), -1)  # (B, S)
        else:
            slots = caption_slots(available, self.seed, epoch, indices, self.caption_weights)
        batch = self.latent_set.gather(indices, slots, out)
        # Every array the set stores (second encoder, image embeddings) passes through as a tensor.
        return {name: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                for name, value in batch.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self._epoch
        first = self._seen // (self.world * self.batch_size)
        todo = self.rank_batches(epoch)[first:]
        batches = self._prefetched(todo, epoch) if self.workers > 0 else (self._load(ix, epoch) for ix in todo)
        for step, batch in enumerate(batches, start=first):
            # Counted before the batch is handed over: a checkpoint taken after
            # training on it resumes with the next one.
            self.set_position(epoch, (step + 1) * self.world * self.batch_size)
            yield batch

    def _prefetched(self, todo: list[np.ndarray], epoch: int) -> Iterator[dict[str, Any]]:
        """The batches of `todo`, in order, gathered up to workers x prefetch ahead on threads."""
        with cf.ThreadPoolExecutor(self.workers, thread_name_prefix="latent-loader") as pool:

            def submit(indices: np.ndarray) -> cf.Future:
                # Buffers are allocated here, on the consumer's thread, where they are also
                # freed: glibc then reuses them instead of faulting in fresh pages per batch.
                return pool.submit(self._load, indices, epoch,
                                   self.latent_set.empty_batch(indices, self.captions_per_record))

            upcoming = iter(todo)
            pending = deque(submit(ix) for ix in itertools.islice(upcoming, self.workers * self.prefetch))
            while pending:
                batch = pending.popleft().result()
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append(submit(nxt))
                yield batch
