"""Names of the samplers and sigma spacings, without torch: the CLI builds its choices from these.

`samplers.SAMPLERS` is checked against them at import, so the two never drift.
"""

from __future__ import annotations

from typing import Literal, get_args

SamplerName = Literal["ddim", "dpmpp-2m", "euler", "heun"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
Spacing = Literal["leading", "trailing", "karras"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
