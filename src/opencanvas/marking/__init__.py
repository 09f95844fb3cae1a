"""Machine-readable marks on generated images: IPTC XMP and a signed C2PA manifest (EU AI Act Art. 50(2)).

Foundation: imports no stage, so `sample`, `eval` and the web app call it through `marker.mark_image_bytes`.
"""
