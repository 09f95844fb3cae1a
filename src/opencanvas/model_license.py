"""The license a trained model is released under, and what its training data obliges, in one place.

The model card, the exported diffusers README and the demo all state these, so they
cannot contradict each other (issue 22, item 4). The rule follows CommonCanvas, whose
CommonCatalog-C models are CC BY-SA 4.0 and -NC models CC BY-NC-SA 4.0: the model takes
the most restrictive terms found in its training licenses, in case a model is an
adaptation of the images it was trained on (legally unsettled), so releasing it under
these terms honours the images' licenses either way.

Foundation layer: imports no stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ATTRIBUTION = frozenset({"cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nc-sa"})
SHARE_ALIKE = frozenset({"cc-by-sa", "cc-by-nc-sa"})
NONCOMMERCIAL = frozenset({"cc-by-nc", "cc-by-nc-sa"})


@dataclass(frozen=True)
class ModelLicense:
    """`license_id` is the Hugging Face / SPDX-style id written as `license:` in an exported README."""

    license_id: str
    name: str
    url: str
    reason: str


_CHOICES = {
    "cc-by-nc-sa-4.0": ("CC BY-NC-SA 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    "cc-by-nc-4.0": ("CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/"),
    "cc-by-sa-4.0": ("CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/"),
    "cc-by-4.0": ("CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/"),
    "cc0-1.0": ("CC0 1.0", "https://creativecommons.org/publicdomain/zero/1.0/"),
}


def model_license(licenses: Iterable[str], policy: str) -> ModelLicense:
    """The model's own license, derived from the license ids in its training subset and its policy."""
    present = set(licenses)
    noncommercial = policy == "noncommercial" or bool(present & NONCOMMERCIAL)
    if noncommercial and present & SHARE_ALIKE:
        chosen, why = "cc-by-nc-sa-4.0", "the training data has non-commercial and ShareAlike images"
    elif noncommercial:
        chosen, why = "cc-by-nc-4.0", "the training data may include non-commercial images (policy or licenses)"
    elif present & SHARE_ALIKE:
        chosen, why = "cc-by-sa-4.0", "the training data has ShareAlike (BY-SA) images"
    elif present & ATTRIBUTION:
        chosen, why = "cc-by-4.0", "the training data has images whose licenses require attribution (CC BY)"
    else:
        chosen, why = "cc0-1.0", "every training image is public domain or CC0, so nothing restricts the model"
    name, url = _CHOICES[chosen]
    reason = (f"chosen because {why}. The model takes the most restrictive terms of its training licenses, in "
              "case a model is an adaptation of its training images (unsettled in law), as CommonCanvas did "
              "(CC BY-SA 4.0 for CommonCatalog-C models, CC BY-NC-SA 4.0 for -NC). It covers the weights trained "
              "here; pretrained components keep their own licenses.")
    return ModelLicense(chosen, name, url, reason)


def obligations(licenses: Iterable[str], policy: str) -> list[str]:
    """What users of the model owe the training data, one plain sentence per obligation."""
    present = set(licenses)
    out = []
    if present & ATTRIBUTION:
        out.append("**Attribution required.** Some training images are CC BY-family licensed: credit them as "
                   "listed in `ATTRIBUTION.md` / `attribution.csv` when you distribute this model.")
    else:
        out.append("**No attribution required by the licenses**: every training image is public domain or CC0 "
                   "(crediting the authors listed in `attribution.csv` is still courteous).")
    if present & SHARE_ALIKE:
        out.append("**ShareAlike present.** Some training images are BY-SA / BY-NC-SA. Whether a model trained on "
                   "them is an adaptation is unsettled; if it is, adaptations must carry the same license.")
    else:
        out.append("**No ShareAlike material** is in the training data.")
    if policy == "noncommercial" or present & NONCOMMERCIAL:
        out.append("**Non-commercial.** The NC policy admits CC BY-NC images: do not use this model commercially.")
    else:
        out.append(f"**Commercial use allowed** by the training data's licenses (the {policy} policy).")
    out.append("No-derivatives (ND) and unknown licenses never enter training.")
    return out
