"""LatentSet and LatentLoader on random latent sets in the real store format (no models)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from opencanvas.encode import LatentLoader, open_latents
from opencanvas.encode.loader import caption_slots, epoch_batches
from opencanvas.encode.synthetic import write_random_latents

N = 50
CAPTIONERS = ("metadata", "blip2")


@pytest.fixture
def latents(ws):
    # 50 records in 4 shards; every 3rd record lacks its blip2 caption.
    write_random_latents(ws, "lat", N, resolution=64, text_len=8, text_dim=16, captioners=CAPTIONERS,
                         shard_size=16, missing_every=3)
    return open_latents(ws, "lat")


def all_keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["keys"]]


def test_set_meta_records_and_null_text(latents):
    assert len(latents) == N and latents.meta["count"] == N
    assert latents.meta["latent_size"] == 8 and latents.meta["captioners"] == list(CAPTIONERS)
    assert sorted(latents.keys()) == [f"synthetic:{i:08d}" for i in range(N)]
    rec = latents.get(3)  # record 3 is missing its blip2 caption
    assert rec.key == "synthetic:00000003"
    assert rec.mean.shape == rec.std.shape == (4, 8, 8) and rec.mean.dtype == np.float16
    assert rec.text.shape == (2, 8, 16) and rec.mask.shape == (2, 8)
    assert rec.captions == ["caption metadata of synthetic:00000003", ""]
    assert rec.mask[0].any() and not rec.mask[1].any()
    text, mask = latents.null_text()
    assert text.shape == (8, 16) and text.dtype == np.float16 and mask.shape == (8,)
    with pytest.raises(IndexError):
        latents.get(N)


def test_loader_batch_matches_records(latents):
    loader = LatentLoader(latents, batch_size=5, seed=7)
    batch = next(iter(loader))
    assert batch["mean"].shape == (5, 4, 8, 8) and batch["mean"].dtype == torch.float16
    assert batch["text"].shape == (5, 8, 16) and batch["mask"].dtype == torch.bool
    index = {k: i for i, k in enumerate(latents.keys())}
    for b, key in enumerate(batch["keys"]):
        rec = latents.get(index[key])
        assert np.array_equal(batch["mean"][b].numpy(), rec.mean)
        assert np.array_equal(batch["std"][b].numpy(), rec.std)
        # The text is one of the record's own captions (an available one).
        assert any(np.array_equal(batch["text"][b].numpy(), rec.text[k]) and rec.mask[k].any() for k in range(2))


def test_epoch_is_a_deterministic_permutation_per_seed_and_epoch(latents):
    first = all_keys(LatentLoader(latents, batch_size=5, seed=1))
    assert first == all_keys(LatentLoader(latents, batch_size=5, seed=1))
    assert sorted(first) == sorted(latents.keys())  # 50 = 10 full batches: the whole set, once
    assert first != all_keys(LatentLoader(latents, batch_size=5, seed=2))
    assert first != all_keys(LatentLoader(latents, batch_size=5, seed=1, epoch=1))


def test_ranks_are_disjoint_equal_and_cover_the_epoch(latents):
    world, batch = 3, 4
    shares = [all_keys(LatentLoader(latents, batch_size=batch, seed=5, rank=r, world=world)) for r in range(world)]
    # 50 records -> 12 full batches of 4 -> 4 steps of 3 ranks; the 2-record tail is dropped.
    assert [len(s) for s in shares] == [16, 16, 16]
    union = [k for s in shares for k in s]
    assert len(set(union)) == len(union) == 48
    # The ranks together walk the single-rank epoch order, step by step.
    single = [b for b in epoch_batches(latents, batch, 5, 0)][:12]
    interleaved = [k for step in range(4) for r in range(world) for k in shares[r][step * batch:(step + 1) * batch]]
    assert interleaved == [latents.key(int(i)) for b in single for i in b]


def test_exact_resume_from_position(latents):
    full = LatentLoader(latents, batch_size=4, seed=3, world=2, rank=1)
    batches = list(full)
    assert full.position == (1, 0)  # epoch done: next epoch, nothing seen
    part = LatentLoader(latents, batch_size=4, seed=3, world=2, rank=1)
    it = iter(part)
    for _ in range(2):
        next(it)
    epoch, seen = part.position
    assert (epoch, seen) == (0, 2 * 2 * 4)  # samples seen by both ranks together
    resumed = list(LatentLoader(latents, batch_size=4, seed=3, world=2, rank=1, epoch=epoch, start=seen))
    assert len(resumed) == len(batches) - 2
    for a, b in zip(resumed, batches[2:]):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["text"], b["text"]) and torch.equal(a["mean"], b["mean"])
    with pytest.raises(ValueError, match="multiple"):
        LatentLoader(latents, batch_size=4, seed=3, world=2, start=3)


def test_iteration_continues_into_next_epoch(latents):
    loader = LatentLoader(latents, batch_size=10, seed=0)
    first, second = all_keys(loader), all_keys(loader)
    assert loader.position == (2, 0)
    assert second == all_keys(LatentLoader(latents, batch_size=10, seed=0, epoch=1))
    assert first != second


def test_workers_give_the_same_batches(latents):
    plain = list(LatentLoader(latents, batch_size=4, seed=9))
    threaded = list(LatentLoader(latents, batch_size=4, seed=9, workers=2, prefetch=1))
    assert [b["keys"] for b in plain] == [b["keys"] for b in threaded]
    assert all(torch.equal(a["text"], b["text"]) for a, b in zip(plain, threaded))


def test_caption_choice_is_deterministic_and_uses_both_captioners():
    available = np.ones((2000, 2), bool)
    available[::3, 1] = False       # only captioner 0
    available[5] = False            # no caption at all -> empty prompt
    idx = np.arange(2000)
    slots = caption_slots(available, seed=1, epoch=0, indices=idx)
    assert np.array_equal(slots, caption_slots(available, seed=1, epoch=0, indices=idx))
    assert slots[5] == -1
    assert (slots[::3][slots[::3] >= 0] == 0).all()
    both = np.nonzero(available.all(axis=1))[0]
    share = slots[both].mean()
    assert 0.45 < share < 0.55  # uniform between the two
    # A new epoch draws again (same record, possibly another caption).
    other = caption_slots(available, seed=1, epoch=1, indices=idx)
    assert 0.35 < (other[both] != slots[both]).mean() < 0.65


def test_records_without_caption_get_the_empty_prompt(ws):
    write_random_latents(ws, "one", 12, resolution=32, text_len=4, text_dim=8, captioners=("metadata",),
                         missing_every=2)
    lat = open_latents(ws, "one")
    null_text, null_mask = lat.null_text()
    for batch in LatentLoader(lat, batch_size=4, seed=0):
        for b, key in enumerate(batch["keys"]):
            if int(key.split(":")[1]) % 2 == 0:
                assert np.array_equal(batch["text"][b].numpy(), null_text)
                assert np.array_equal(batch["mask"][b].numpy(), null_mask)


def test_buckets_batch_within_one_shape(ws):
    write_random_latents(ws, "bk", 60, resolution=64, text_len=4, text_dim=8, shard_size=25,
                         buckets=((64, 64), (48, 80), (80, 48)))
    lat = open_latents(ws, "bk")
    assert lat.meta["bucket_counts"] == {"48x80": 20, "64x64": 20, "80x48": 20}
    assert lat.meta["bucket_sizes"]["48x80"] == [6, 10]
    loader = LatentLoader(lat, batch_size=6, seed=0, world=2)
    other = LatentLoader(lat, batch_size=6, seed=0, world=2, rank=1)
    shapes = {tuple(b["mean"].shape) for b in [*loader, *other]}
    assert shapes == {(6, 4, 8, 8), (6, 4, 6, 10), (6, 4, 10, 6)}
    # 3 buckets x 3 full batches = 9 batches -> 4 steps of 2 ranks.
    assert loader.steps_per_epoch == 4 and loader.samples_per_epoch == 48
    with pytest.raises(ValueError, match="one bucket"):
        lat.gather(np.array([0, 59]), np.array([0, 0]))


def test_latent_set_pickles_without_its_memory_maps(latents):
    latents.get(0)
    clone = pickle.loads(pickle.dumps(latents))
    assert len(pickle.dumps(latents)) < 100_000  # no arrays inside
    assert np.array_equal(clone.get(7).text, latents.get(7).text)


def test_errors_say_what_to_do(ws, latents):
    with pytest.raises(FileNotFoundError, match="opencanvas encode"):
        open_latents(ws, "missing")
    with pytest.raises(ValueError, match="no resolution 512"):
        open_latents(ws, "lat", resolution=512)
    with pytest.raises(ValueError, match="no full step"):
        LatentLoader(latents, batch_size=40, seed=0, world=2)


def test_loader_leaves_out_the_heldout_split(tmp_path) -> None:
    from opencanvas.encode import LatentLoader, open_latents
    from opencanvas.encode.synthetic import write_random_latents
    from opencanvas.splits import key_fraction
    from opencanvas.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    write_random_latents(ws, "lat", 64)
    latents = open_latents(ws, "lat")
    seen = {k for batch in LatentLoader(latents, 4, seed=0, holdout=0.25) for k in batch["keys"]}
    assert seen and all(key_fraction(k) >= 0.25 for k in seen)
    assert any(key_fraction(k) < 0.25 for k in latents.keys())
