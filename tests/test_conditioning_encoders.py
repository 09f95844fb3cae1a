"""Two text encoders and image embeddings as conditioning (issue 14): the parameter-free pieces."""

from __future__ import annotations

import torch

from opencanvas.diffusion.image_conditioning import ImageTokens
from opencanvas.diffusion.text_encoders import concat_features, drop_encoder, fit_length


def test_second_encoder_is_fitted_to_the_first_length_and_concatenated_per_token():
    text, mask = torch.randn(2, 6, 4), torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    short, short_mask = torch.randn(2, 3, 5), torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    both, both_mask = concat_features(text, mask, short, short_mask)  # padded: (2, 6, 9)
    assert both.shape == (2, 6, 9)
    assert torch.equal(both[:, :, :4], text) and torch.equal(both[:, :3, 4:], short)
    assert not both[:, 3:, 4:].any()
    assert both_mask.tolist() == [[True, True, True, False, False, False], [True, True, False, False, False, False]]
    long, long_mask = torch.randn(2, 9, 5), torch.ones(2, 9, dtype=torch.bool)
    cut, cut_mask = fit_length(long, long_mask, 6)  # truncated
    assert torch.equal(cut, long[:, :6]) and cut_mask.shape == (2, 6)


def test_dropping_one_encoder_replaces_only_its_rows():
    value, null = torch.randn(3, 4, 2), torch.zeros(4, 2)
    out = drop_encoder(torch.tensor([False, True, False]), value, null)
    assert torch.equal(out[0], value[0]) and torch.equal(out[2], value[2]) and not out[1].any()


def test_image_tokens_shape():
    tokens = ImageTokens(image_dim=16, text_dim=8, tokens=3)(torch.randn(5, 16))
    assert tokens.shape == (5, 3, 8)
