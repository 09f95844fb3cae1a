"""Patch discriminator and the adversarial terms of the autoencoder loss.

PatchGAN (Isola et al. 2017, pix2pix; `NLayerDiscriminator` of taming-transformers, Esser et al. 2021):
4x4 convs, stride 2 then 1, LeakyReLU 0.2, one logit per overlapping patch. Here GroupNorm(32) stands in
for BatchNorm: the autoencoder trains on small batches (4-8 crops), where batch statistics are noisy,
and GroupNorm behaves the same in train and eval mode. Hinge loss (Lim & Ye 2017) for the
discriminator; the generator term -mean D(x_hat) is weighted adaptively (Esser et al. 2021, eq. 7):
    lambda = disc_weight * ||grad_L L_rec|| / (||grad_L L_G|| + 1e-4),   L = the decoder's last layer
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> patch logits (B, 1, h, w); receptive field 70 px for n_layers=3."""

    def __init__(self, n_layers: int = 3, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for n in range(1, n_layers + 1):
            out = width * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride, 1, bias=False), nn.GroupNorm(32, out),
                       nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.n_layers = n_layers
        for m in self.modules():  # pix2pix / taming initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 (E relu(1 - D(x)) + E relu(1 + D(x_hat)))."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """Esser et al. 2021's lambda (detached), so the GAN gradient at the last layer matches the
    reconstruction gradient's scale; both graphs are kept for the backward pass that follows."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * disc_weight
