"""The Open Clip Art Library as Debian packages it (openclipart-svg, openclipart-png).

Tree: `<lib>/svg/<category>/.../<name>.svg` with a PNG twin at
`<lib>/png/<category>/.../<name>.png`. Each SVG carries RDF metadata
(`cc:Work`: dc:title, dc:description, dc:subject keywords, dc:creator and
cc:license). Items whose license is empty take the collection's license, the
public-domain dedication declared in the package's copyright file
(license_origin=collection); other licenses (there are GPL items) go to
quarantine. Symlinked aliases resolve to their target, so an image appears
once (the alias is quarantined as a duplicate key).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from opencanvas.catalog.records import BatchBuilder, SourceBatch, clean_text, extra_json
from opencanvas.catalog.sources.base import (
    InputFormatError,
    InputUnit,
    Rejected,
    SourceAdapter,
    add_record,
    record_license,
)
from opencanvas.licenses import License, normalize

NAME = "openclipart"
COPYRIGHT_FILES = ("/usr/share/doc/openclipart-svg/copyright", "/usr/share/doc/openclipart-png/copyright")
COLLECTION_LICENSE_URL = "http://web.resource.org/cc/PublicDomain"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"

_METADATA = re.compile(rb"<(?:[\w-]+:)?metadata[\s>].*?</(?:[\w-]+:)?metadata>", re.DOTALL)
# Wrapping the <metadata> fragment lets us parse a few KB instead of a whole drawing;
# prefixes the fragment does not declare itself come from here.
_WRAP_OPEN = (b'<wrap xmlns="http://www.w3.org/2000/svg" xmlns:rdf="' + RDF.encode() + b'" '
              b'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:cc="http://web.resource.org/cc/" '
              b'xmlns:svg="http://www.w3.org/2000/svg">')


def library_root(path: Path) -> Path | None:
    """The `svg/` folder of the library that `path` lies in (or is), if any."""
    path = path.resolve()
    if (path / "svg").is_dir() and (path / "png").is_dir():
        return path / "svg"
    for d in (path, *path.parents):
        if d.name == "svg" and (d.parent / "png").is_dir():
            return d
    return None


def collection_license() -> License | None:
    """The license the package declares for all items (None when no copyright file says so)."""
    for f in COPYRIGHT_FILES:
        try:
            text = Path(f).read_text(errors="replace")
        except OSError:
            continue
        if re.search(r"public\s+domain\s+dedication", text, re.IGNORECASE):
            return normalize(COLLECTION_LICENSE_URL)
    return None


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    units: list[InputUnit] = []
    for p in paths:
        p = Path(p).resolve()
        root = library_root(p) if p.exists() else None
        if root is None:
            raise InputFormatError(
                f"{p}: not in an Open Clip Art Library tree; expected /usr/share/openclipart (packages "
                "openclipart-svg and openclipart-png) or a folder or .svg file under its svg/ folder")
        if p == root or p == root.parent:
            # One unit per category folder (recursive) plus the files directly in svg/.
            units.append(InputUnit(NAME, str(root), str(root)))
            units += [InputUnit(NAME, str(d), str(root)) for d in sorted(root.iterdir()) if d.is_dir()]
        else:
            units.append(InputUnit(NAME, str(p), str(root)))
    return units


def _svg_files(unit: InputUnit) -> list[str]:
    path = unit.path
    if os.path.isfile(path):
        return [path]
    if path == unit.root:  # the root unit holds only the loose files
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".svg"))
    found = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names if n.endswith(".svg")]
    return sorted(found)


def _local(el: Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _child(el: Element | None, name: str) -> Element | None:
    if el is None:
        return None
    return next((c for c in el if _local(c) == name), None)


def parse_rdf(data: bytes) -> Element | None:
    """The cc:Work element of an SVG's RDF metadata (None when the SVG has none)."""
    m = _METADATA.search(data)
    if m is None:
        return None
    try:
        tree = SafeET.fromstring(_WRAP_OPEN + m.group(0) + b"</wrap>")
    except SafeET.ParseError:
        tree = SafeET.fromstring(data)  # non-UTF-8 files: let the declared encoding apply
    return next((el for el in tree.iter() if _local(el) == "Work"), None)


def _agent_title(work: Element, name: str) -> str | None:
    title = _child(_child(_child(work, name), "Agent"), "title")
    return clean_text(title.text) if title is not None else None


def png_size(path: str) -> tuple[int | None, int | None]:
    """Width and height from the PNG signature + IHDR chunk (24 bytes, no decoding)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None, None
    return struct.unpack(">II", head[16:24])


def _record(svg: str, root: str, collection: License | None) -> tuple[str, dict, License, str]:
    real = os.path.realpath(svg)
    if os.path.commonpath([real, root]) != root:
        raise Rejected("outside-library", f"{svg} links to {real}, outside {root}")
    rel = os.path.relpath(real, root)[: -len(".svg")]
    with open(real, "rb") as f:
        data = f.read()
    try:
        work = parse_rdf(data)
    except SafeET.ParseError as e:
        raise Rejected("malformed", f"SVG metadata is not well-formed XML: {e}") from None
    except DefusedXmlException as e:  # a DTD entity or external reference: refused, as XML bombs are
        raise Rejected("malformed", f"SVG metadata declares what a safe parser refuses: {e!r}") from None
    if work is None:
        raise Rejected("missing:metadata", "SVG has no RDF cc:Work metadata")
    lic_el = _child(work, "license")
    lic_text = None if lic_el is None else (lic_el.get(f"{{{RDF}}}resource") or lic_el.text or "").strip()
    if lic_text:
        lic, origin = record_license(None, lic_text, "cc:license"), "item"
    elif collection is not None:
        lic, origin = collection, "collection"
    else:
        raise Rejected("license:missing", "empty cc:license and no collection license declared")
    png = os.path.join(os.path.dirname(root), "png", rel + ".png")
    if not os.path.exists(png):
        raise Rejected("missing:pixels", f"no PNG twin at {png}")
    width, height = png_size(png)
    subject = _child(_child(work, "subject"), "Bag")
    tags = [t for t in (clean_text(li.text) for li in (subject if subject is not None else [])) if t]
    title, description = _child(work, "title"), _child(work, "description")
    row = {
        "title": clean_text(title.text) if title is not None else None,
        "description": clean_text(description.text) if description is not None else None,
        "tags": tags,
        "category": rel.split(os.sep, 1)[0] if os.sep in rel else None,
        "creator": _agent_title(work, "creator"),
        "local_path": png,
        "width": width,
        "height": height,
        "extra": extra_json({"svg_path": real, "publisher": _agent_title(work, "publisher"),
                             "rights": _agent_title(work, "rights")}),
    }
    return rel.replace(os.sep, "/"), row, lic, origin


def _record_or_unreadable(svg: str, root: str, collection: License | None) -> tuple[str, dict, License, str]:
    try:
        return _record(svg, root, collection)
    except OSError as e:
        raise Rejected("unreadable", str(e)) from None


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    collection = collection_license()
    builder = BatchBuilder(NAME, unit.path)
    for record_no, svg in enumerate(_svg_files(unit), start=1):
        add_record(builder, record_no, os.path.relpath(svg, unit.root), _record_or_unreadable, svg, unit.root,
                   collection)
        if builder.full:
            yield builder.flush()
    yield builder.flush()


ADAPTER = SourceAdapter(NAME, "Open Clip Art Library tree (Debian openclipart-svg + openclipart-png)", plan, read)
