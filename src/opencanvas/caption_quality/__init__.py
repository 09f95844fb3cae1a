"""Caption quality: CLIP image-text alignment per caption (`caption score`) and best-caption sets (`caption select`).

Above `sample` (it loads a CLIP, and generates for the round-trip score); `caption stats` in the caption
layer reads the score files it writes. Import from the modules (`score`, `select`): the package re-exports
nothing, so `opencanvas --help` stays light.
"""
