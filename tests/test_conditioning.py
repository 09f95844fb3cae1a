"""The conditioning object: batching, dropout, CFG and samplers handle every field; the adapter submodule."""

from __future__ import annotations

import pytest
import torch

from opencanvas.diffusion.conditioning import (
    ADAPTER_KEY,
    Conditioning,
    ConditioningAdapter,
    unet_inputs,
)
from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.diffusion.guidance import CFGDenoiser
from opencanvas.diffusion.samplers import get_sampler, get_sigmas, initial_noise_scale
from opencanvas.train.presets import PRESETS, build_unet

TEXT_DIM, LENGTH = 32, 6


def _unet_config(**extra: object) -> dict:
    return {**PRESETS["tiny"].unet.unet_config(4, TEXT_DIM, 8), **extra}


def _cond(b: int, seed: int, classes: bool = False) -> Conditioning:
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(b, LENGTH, TEXT_DIM, generator=gen)
    mask = torch.rand(b, LENGTH, generator=gen) < 0.8
    labels = torch.randint(0, 3, (b,), generator=gen) if classes else None
    return Conditioning(text, mask, class_labels=labels)


def test_cat_where_expand_and_to_treat_every_field_together() -> None:
    a, b = _cond(2, 0, classes=True), _cond(3, 1, classes=True)
    both = Conditioning.cat([a, b])
    assert both.batch_size == 5 and torch.equal(both.class_labels, torch.cat([a.class_labels, b.class_labels]))
    null = Conditioning(torch.zeros(1, LENGTH, TEXT_DIM), torch.ones(1, LENGTH, dtype=torch.bool),
                        class_labels=torch.tensor([3]))
    drop = torch.tensor([True, False, True, False, False])
    dropped = both.where(drop, null)
    assert torch.equal(dropped.class_labels, torch.tensor([3, both.class_labels[1], 3, *both.class_labels[3:]]))
    assert dropped.text[0].abs().sum() == 0 and torch.equal(dropped.text[1], both.text[1])
    assert bool(dropped.mask[2].all()) and torch.equal(dropped.mask[3], both.mask[3])
    # One field alone (an input with its own dropout): the others stay.
    only = both.where(drop, null, fields=("class_labels",))
    assert torch.equal(only.text, both.text) and int(only.class_labels[0]) == 3
    assert null.expand(4).class_labels.tolist() == [3, 3, 3, 3]
    half = both.to(dtype=torch.float16)
    assert half.text.dtype == torch.float16 and half.mask.dtype == torch.bool and half.class_labels.dtype == torch.long
    with pytest.raises(ValueError, match="different fields"):
        Conditioning.cat([a, _cond(1, 2)])
    with pytest.raises(ValueError, match="no null value"):
        both.where(drop, Conditioning(null.text, null.mask))


def test_text_conditioning_is_the_old_call_bit_for_bit() -> None:
    """A Conditioning with text and mask reaches the UNet exactly as the two tensors did."""
    unet = build_unet(_unet_config(), seed=0).eval()
    denoiser = Denoiser(unet, NoiseSchedule())
    cond = _cond(2, 0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor([3.0, 0.5])
    with torch.no_grad():
        ours = denoiser(x, sigma, cond)
        old_style = denoiser(x, sigma, cond.text, cond.mask)
        c_in = 1.0 / (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt()
        direct = unet(x * c_in, denoiser.sigma_to_t(sigma), encoder_hidden_states=cond.text,
                      encoder_attention_mask=cond.mask).sample
    assert torch.equal(ours, old_style) and torch.equal(ours, x - sigma.view(-1, 1, 1, 1) * direct)
    t = torch.tensor([10, 900])
    assert torch.equal(denoiser.loss(x, x.flip(0), t, cond), denoiser.loss(x, x.flip(0), t, cond.text, cond.mask))
    assert set(unet_inputs(unet, cond)) == {"encoder_hidden_states", "encoder_attention_mask"}


def test_cfg_and_samplers_batch_class_labels_with_the_text() -> None:
    """CFG runs one (2B) pass whose halves equal separate conditional and unconditional passes, labels included."""
    unet = build_unet(_unet_config(num_class_embeds=4), seed=0).eval()
    denoiser = Denoiser(unet, NoiseSchedule())
    cond = _cond(2, 0, classes=True)
    null = Conditioning(torch.zeros(1, LENGTH, TEXT_DIM), torch.ones(1, LENGTH, dtype=torch.bool),
                        class_labels=torch.tensor([3])).expand(2)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 3
    sigma = torch.full((2,), 3.0)
    with torch.no_grad():
        d_c, d_u = denoiser(x, sigma, cond), denoiser(x, sigma, null)
        guided = CFGDenoiser(denoiser, 4.0)(x, sigma, cond=cond, uncond=null)
        other_class = denoiser(x, sigma, cond.replace(class_labels=(cond.class_labels + 1) % 4))
    torch.testing.assert_close(guided, d_u + 4.0 * (d_c - d_u), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(d_c, other_class)  # the label reaches the UNet
    sigmas = get_sigmas(denoiser, 3, "trailing")
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * initial_noise_scale(sigmas)
    with torch.no_grad():
        out = get_sampler("dpmpp-2m")(CFGDenoiser(denoiser, 4.0), noise, sigmas, extra_args={"cond": cond,
                                                                                              "uncond": null})
    assert out.shape == noise.shape and bool(out.isfinite().all())


def test_adapter_is_a_unet_submodule_that_leaves_the_unet_weights_alone() -> None:
    plain = build_unet(_unet_config(), seed=0)
    adapted = build_unet(_unet_config(**{ADAPTER_KEY: {"text_dim": TEXT_DIM, "slots": 3}}), seed=0)
    extra = set(adapted.state_dict()) - set(plain.state_dict())
    assert extra == {f"{ADAPTER_KEY}.slot_embedding"}
    assert all(torch.equal(v, adapted.state_dict()[k]) for k, v in plain.state_dict().items())
    assert isinstance(getattr(adapted, ADAPTER_KEY), ConditioningAdapter) and not hasattr(plain, ADAPTER_KEY)
    # Each caption slot gets its own learned embedding added to its tokens.
    text = torch.zeros(1, 3 * LENGTH, TEXT_DIM)
    seen: dict = {}
    block = adapted.down_blocks[0].attentions[0].transformer_blocks[0].attn2  # cross-attention sees the text
    block.register_forward_hook(lambda m, args, kwargs, out: seen.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        adapted(torch.zeros(1, 4, 8, 8), 1, **unet_inputs(adapted, Conditioning(text)))
    seen = seen["encoder_hidden_states"]
    slots = getattr(adapted, ADAPTER_KEY).slot_embedding
    for k in range(3):
        assert torch.equal(seen[0, k * LENGTH:(k + 1) * LENGTH], slots[k].expand(LENGTH, -1))


def test_an_image_embedding_without_image_conditioning_is_one_clear_error() -> None:
    unet = build_unet(_unet_config(), seed=0)
    cond = Conditioning(torch.zeros(1, LENGTH, TEXT_DIM), image=torch.zeros(1, 16))
    with pytest.raises(ValueError, match="without image conditioning: leave out --image"):
        unet_inputs(unet, cond)


def test_an_adapted_unet_trains_under_fsdp2(tmp_path) -> None:
    """The adapter runs inside the UNet's call, so FSDP2 gathers its parameters with the root unit and reduces
    its gradient (a one-rank process group: the failure, an adapter called outside the root, needs no second)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    config = _unet_config(**{ADAPTER_KEY: {"text_dim": TEXT_DIM, "slots": 2}})
    cond = Conditioning(torch.randn(2, 2 * LENGTH, TEXT_DIM, generator=torch.Generator().manual_seed(0)))
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700])

    def slot_grad(unet: torch.nn.Module) -> torch.Tensor:
        Denoiser(unet, NoiseSchedule()).loss(x0, x0.flip(0), t, cond).mean().backward()
        grad = getattr(unet, ADAPTER_KEY).slot_embedding.grad
        return grad.full_tensor() if isinstance(grad, DTensor) else grad

    plain = slot_grad(build_unet(config, seed=0))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        unet = build_unet(config, seed=0)
        for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:  # as training.distributed.wrap_model
            fully_shard(block)
        fully_shard(unet)
        sharded = slot_grad(unet)
    finally:
        dist.destroy_process_group()
    assert plain.abs().sum() > 0
    torch.testing.assert_close(sharded, plain)
