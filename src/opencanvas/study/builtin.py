"""The built-in studies, sized for the Open Clip Art Library on 2 CPU cores (a workspace where
`opencanvas demo` has run: subset clipart-c, autoencoder clipart-ae, CLIP clipart-clip)."""

from __future__ import annotations

DATA_SCALING = """\
[study]
name = "data-scaling"
description = "CLIP score against the share of the catalog trained on (paper section 5), two UNets, equal compute."
subset = "clipart-c"
captioner = "metadata"
resolution = 64
autoencoder = "clipart-ae"
text_encoder = "clipart-clip"

[axes]
preset = ["tiny", "tiny-wide"]
fraction = [0.1, 0.3, 1.0]

[train]
images = 4096
batch = 16

[eval]
prompts = "heldout"
n = 32
guidance = [1.5, 4.0]
steps = 20
"""

CAPTIONS = """\
[study]
name = "captions"
# Every cell is scored on the same prompts: the held-out metadata captions. On CommonCatalog, add the
# commoncatalog captioner (the released BLIP-2 captions) to the axis.
description = "Which captions to train on (paper section 4): title, title + keywords, title + description + keywords."
subset = "clipart-c"
resolution = 64
autoencoder = "clipart-ae"
text_encoder = "clipart-clip"

[axes]
captioner = ["title", "title-tags", "metadata"]

[train]
preset = "tiny"
images = 4096
batch = 16

[eval]
prompts = "heldout"
prompt_captioner = "metadata"
n = 32
guidance = [1.5, 4.0]
steps = 20
"""

BUILTIN_STUDIES = {"data-scaling": DATA_SCALING, "captions": CAPTIONS}
