"""XMP packets that say an image was made by a trained model (IPTC DigitalSourceType).

The IPTC value `trainedAlgorithmicMedia` is what Adobe's, Google's and OpenAI's tools read as
"AI generated"; the model name and weights hash go beside it under our own namespace.
"""

from __future__ import annotations

import json
import re
from typing import Any
from xml.sax.saxutils import escape

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
OPENCANVAS_NS = "https://opencanvas.dev/ns/1.0/"
PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword the XMP spec (part 3) gives PNG


def _attr(value: object) -> str:
    """A double-quoted XML attribute value (what `read_xmp_fields` reads back)."""
    return '"' + escape(str(value), {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}) + '"'


def xmp_packet(meta: dict[str, Any], with_generation: bool = False) -> str:
    """An XMP packet with the digital source type, model name and weights hash of `meta`; with
    `with_generation`, all of `meta` as JSON too (JPEG/WebP have no PNG text chunks to hold it)."""
    model, weights = _attr(meta.get("model", "unknown")), _attr(meta.get("weights_hash", "unknown"))
    generation = (" opencanvas:generation=" + _attr(json.dumps(meta, sort_keys=True, default=str))
                  if with_generation else "")
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        f' xmlns:opencanvas="{OPENCANVAS_NS}"'
        f' Iptc4xmpExt:DigitalSourceType="{escape(TRAINED_ALGORITHMIC_MEDIA)}"'
        f" opencanvas:model={model} opencanvas:weights_sha256={weights}{generation}/>"
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


_FIELDS = {"digital_source_type": "Iptc4xmpExt:DigitalSourceType", "model": "opencanvas:model",
           "weights_sha256": "opencanvas:weights_sha256", "generation": "opencanvas:generation"}


def read_xmp_fields(xmp: str | bytes | None) -> dict[str, str]:
    """The fields `xmp_packet` writes (attribute or element form), from any XMP packet; {} when absent."""
    if not xmp:
        return {}
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    out: dict[str, str] = {}
    for field, tag in _FIELDS.items():
        found = (re.search(rf'{tag}="([^"]*)"', text)
                 or re.search(rf"<{tag}>([^<]*)</{tag}>", text)
                 or re.search(rf'<{tag} rdf:resource="([^"]*)"', text))
        if found:
            out[field] = _unescape(found.group(1))
    return out


def _unescape(text: str) -> str:
    return (text.replace("&quot;", '"').replace("&#10;", "\n").replace("&#13;", "\r").replace("&#9;", "\t")
            .replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
