"""Two text encoders as one conditioning (eDiff-I, SDXL): how their outputs combine, with no parameters.

Feature axis (the default, as SDXL): the second encoder's hidden states are padded or truncated to
the first encoder's length L1 and concatenated per token, (B, L1, D1 + D2). The UNet keeps a
plain `cross_attention_dim` = D1 + D2, so an export loads in stock diffusers' UNet2DConditionModel,
and no projection has to be learnt before the first step. (Along the sequence the encoders'
widths would have to be projected to one, which is a learnt layer and no diffusers config.)
Both pooled embeddings (and, with image conditioning, the image embedding) are concatenated into
one vector that diffusers adds to the timestep embedding through class_embed_type="projection".

eDiff-I drops each encoder on its own during training, so the model also works with either one
alone; `drop_encoder` replaces one encoder's rows by its empty-prompt values before combining.
"""

from __future__ import annotations

import torch


def fit_length(hidden: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L2, D) hidden states and (B, L2) mask cut or zero-padded to (B, length, D), (B, length)."""
    current = hidden.shape[1]
    if current >= length:
        return hidden[:, :length], mask[:, :length]
    pad = length - current
    hidden = torch.cat([hidden, hidden.new_zeros(hidden.shape[0], pad, hidden.shape[2])], dim=1)
    return hidden, torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1)


def concat_features(text: torch.Tensor, mask: torch.Tensor, text2: torch.Tensor, mask2: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L1, D1) + (B, L2, D2) -> (B, L1, D1 + D2); a token is attended where either encoder has one."""
    text2, mask2 = fit_length(text2, mask2, text.shape[1])
    return torch.cat([text, text2.to(text.dtype)], dim=-1), mask | mask2


def drop_encoder(drop: torch.Tensor, value: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """Rows where `drop` (B,) holds take `null` (one row, broadcast): that encoder's empty prompt."""
    return torch.where(drop.view((-1,) + (1,) * (value.ndim - 1)), null.to(value).expand_as(value), value)
