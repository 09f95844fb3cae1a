"""Normalise the license statements real image sources use to one canonical id.

`normalize(text)` understands Creative Commons URLs (with or without scheme,
`www`, trailing slash, jurisdiction ports such as `by-sa/2.0/de/`, `deed.xx` /
`legalcode` suffixes), YFCC100M license names ("Attribution-NonCommercial
License"), short names ("CC BY-SA 4.0", "cc-by-sa-3.0-de", Openverse's "by-nc"),
CC0 / Public Domain Mark statements and the retired CC public-domain URLs.
Anything else (GPL, GFDL, "All Rights Reserved", empty text, garbage) is
`other`: a license is never guessed into an open one.

It is strict, because a catalog that launders a license is worse than none:
- a URL counts only on `creativecommons.org` (or `www.`), in the known path forms;
- text holding a URL and anything more than filler words counts only when the
  rest names the same license ("All rights reserved, not <CC URL>" is `other`);
- `license_of(name, url)` is the one entry point of every source: when a record
  gives both a name and a URL they must agree, else `LicenseRejected("license:conflict")`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# The canonical license ids of the catalog's `license_id` column (architecture.md).
LICENSE_IDS = (
    "cc0", "pdm", "cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nc-sa", "cc-by-nd", "cc-by-nc-nd", "other",
)

# license_id -> (commercial_ok, derivatives_ok, share_alike, attribution_required).
# `other` is the conservative reading: nothing is allowed, attribution is owed.
LICENSE_FLAGS: dict[str, tuple[bool, bool, bool, bool]] = {
    "cc0": (True, True, False, False),
    "pdm": (True, True, False, False),
    "cc-by": (True, True, False, True),
    "cc-by-sa": (True, True, True, True),
    "cc-by-nc": (False, True, False, True),
    "cc-by-nc-sa": (False, True, True, True),
    "cc-by-nd": (True, False, False, True),
    "cc-by-nc-nd": (False, False, False, True),
    "other": (False, False, False, True),
}
assert tuple(LICENSE_FLAGS) == LICENSE_IDS

# License policies (architecture.md): the license ids each admits, and the one sentence that states it.
# Subsets, model cards and the CLI all read these, so the wording lives here only.
_COMMERCIAL = frozenset({"cc0", "pdm", "cc-by", "cc-by-sa"})
POLICIES: dict[str, frozenset[str]] = {
    "commercial": _COMMERCIAL,
    "noncommercial": _COMMERCIAL | {"cc-by-nc", "cc-by-nc-sa"},
}
POLICY_TEXT: dict[str, str] = {
    "commercial": "CommonCatalog-C: CC0, Public Domain Mark, CC BY and CC BY-SA images; commercial use allowed, "
                  "attribution owed for BY licenses, BY-SA terms apply to adaptations. "
                  "ND and unknown licenses excluded.",
    "noncommercial": "CommonCatalog-NC: the commercial set plus CC BY-NC and CC BY-NC-SA images; non-commercial "
                     "use only, attribution owed, BY-NC-SA terms apply to adaptations. "
                     "ND and unknown licenses excluded.",
}
assert set(POLICY_TEXT) == set(POLICIES)


def policy_choices() -> str:
    """'commercial (cc0, pdm, cc-by, cc-by-sa) or noncommercial (...)': the policies for help texts."""
    return " or ".join(f"{name} ({', '.join(i for i in LICENSE_IDS if i in ids)})" for name, ids in POLICIES.items())

# Versions Creative Commons has published for the BY family.
CC_VERSIONS = frozenset({"1.0", "2.0", "2.1", "2.5", "3.0", "4.0"})
CC0_URL = "https://creativecommons.org/publicdomain/zero/1.0/"
PDM_URL = "https://creativecommons.org/publicdomain/mark/1.0/"
# The retired "Public Domain Dedication and Certification" (2004-2010), used by
# the Open Clip Art Library. Its flags equal CC0's and PDM's; we record it as
# `pdm` (a public-domain statement), keeping the URL the source gave.
OLD_PUBLIC_DOMAIN_URL = "http://creativecommons.org/licenses/publicdomain/"


@dataclass(frozen=True)
class License:
    license_id: str
    version: str | None
    url: str | None
    commercial_ok: bool
    derivatives_ok: bool
    share_alike: bool
    attribution_required: bool

    @property
    def is_open(self) -> bool:
        return self.license_id != "other"


def make_license(license_id: str, version: str | None = None, url: str | None = None) -> License:
    """A License with the flags that `license_id` implies."""
    return License(license_id, version, url, *LICENSE_FLAGS[license_id])


OTHER = make_license("other")

# ---- URLs -------------------------------------------------------------------
CC_HOSTS = frozenset({"creativecommons.org", "www.creativecommons.org"})
# Path after creativecommons.org/licenses/: code / version / [jurisdiction] / [deed.xx|legalcode...]
_CC_LICENSE_PATH = re.compile(
    r"^licenses/(?P<code>[a-z-]+)(?:/(?P<version>\d+(?:\.\d+)?))?"
    r"(?:/(?!deed|legalcode|rdf)(?P<jur>[a-z]{2,8}(?:-[a-z]{2})?))?"
    r"(?:/(?:deed(?:\.[a-z_-]+)?|legalcode(?:\.[a-z_-]+)?|rdf))?/?$"
)
_PUBLICDOMAIN_PATH = re.compile(
    r"^publicdomain/(?P<tool>zero|mark)/(?P<version>1\.0)(?:/(?:deed(?:\.[a-z_-]+)?|legalcode(?:\.[a-z_-]+)?))?/?$"
)
_OLD_PUBLICDOMAIN_PATH = re.compile(r"^licenses/publicdomain(?:/(?:deed\.[a-z_-]+/?)?)?$")
# Element order varies in old URLs (by-nd-nc); canonical order is by-nc-nd.
_ELEMENTS_TO_ID = {
    frozenset({"by"}): "cc-by",
    frozenset({"by", "sa"}): "cc-by-sa",
    frozenset({"by", "nc"}): "cc-by-nc",
    frozenset({"by", "nc", "sa"}): "cc-by-nc-sa",
    frozenset({"by", "nd"}): "cc-by-nd",
    frozenset({"by", "nc", "nd"}): "cc-by-nc-nd",
}


def _by_family(elements: list[str], version: str | None, jurisdiction: str | None) -> License:
    if len(set(elements)) != len(elements):
        return OTHER
    license_id = _ELEMENTS_TO_ID.get(frozenset(elements))
    if license_id is None:
        return OTHER
    if version is not None:
        version = version if "." in version else f"{version}.0"
        if version not in CC_VERSIONS:
            return OTHER
    code = license_id.removeprefix("cc-")
    url = f"https://creativecommons.org/licenses/{code}/"
    if version:
        url += f"{version}/" + (f"{jurisdiction}/" if jurisdiction else "")
    return make_license(license_id, version, url)


def _from_url(url: str) -> License:
    """One URL token: only the exact CC hosts and known paths count; no user, port, query or fragment."""
    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 or c == "\\" for c in url):
        return OTHER
    if not re.match(r"^(?:https?:)?//", url, re.IGNORECASE):
        if re.match(r"^[a-z][a-z0-9+.-]*:", url, re.IGNORECASE):  # ftp:, javascript:, ...
            return OTHER
        url = "//" + url
    try:
        parts = urlsplit(url)
    except ValueError:
        return OTHER
    if parts.query or parts.fragment or "//" in parts.path:
        return OTHER
    host, path = parts.netloc.lower(), parts.path.lower().removeprefix("/")
    if host == "web.resource.org" and path.rstrip("/") == "cc/publicdomain":
        return make_license("pdm", None, "http://web.resource.org/cc/PublicDomain")
    if host not in CC_HOSTS:  # netloc, not hostname: a user or port makes it a look-alike
        return OTHER
    if _OLD_PUBLICDOMAIN_PATH.match(path):
        return make_license("pdm", None, OLD_PUBLIC_DOMAIN_URL)
    if m := _PUBLICDOMAIN_PATH.match(path):
        return make_license("cc0", "1.0", CC0_URL) if m["tool"] == "zero" else make_license("pdm", "1.0", PDM_URL)
    if m := _CC_LICENSE_PATH.match(path):
        if m["jur"] and not m["version"]:
            return OTHER
        return _by_family(m["code"].split("-"), m["version"], m["jur"])
    return OTHER


def _is_url(token: str) -> bool:
    """Looks like a URL or a host path: a scheme, `//`, `www.`, or a dotted name before the first `/`."""
    return bool(re.match(r"^(?:[a-z][a-z0-9+.-]*:|//|www\.)", token, re.IGNORECASE)
                or re.match(r"^[^/]*\.[^/]*/", token))


# ---- names ------------------------------------------------------------------
# Spelled-out license elements -> their short codes (YFCC: "Attribution-NonCommercial-ShareAlike").
_WORDS = [
    (r"share[\s-]*alike", "sa"),
    (r"non[\s-]*commercial", "nc"),
    (r"no[\s-]*deriv(?:ative)?s?(?:[\s-]*works)?", "nd"),
    (r"attribution", "by"),
    (r"creative[\s-]*commons", "cc"),
    (r"public[\s-]*domain[\s-]*mark", "pdm"),
    (r"public[\s-]*domain[\s-]*dedication", "pdd"),
    (r"public[\s-]*domain", "pd"),
    (r"cc[\s-]*zero", "cc0"),
    (r"\bcc[\s_-]*0(?![\d.])", "cc0"),  # "CC-0", "CC 0"
]
_FILLER = frozenset({"license", "licence", "generic", "unported", "international", "universal", "deed",
                     "legalcode", "the", "version", "v"})
# Words that may stand beside a license URL without changing what it says ("Licensed under <URL>").
_URL_FILLER = frozenset({"license", "licence", "licensed", "under", "the", "a", "see", "url"})
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z0-9]+")


def _from_name(text: str) -> License:
    s = text.lower()
    for pattern, code in _WORDS:
        s = re.sub(pattern, f" {code} ", s)
    tokens = [t for t in _TOKEN.findall(s) if t not in _FILLER]
    if not tokens or not re.fullmatch(r"[a-z0-9.\s,:;()_/-]*", s):
        return OTHER
    if tokens[0] == "cc":
        tokens = tokens[1:]
    version = None
    # Public domain forms: "CC0 1.0", "cc0", "CC0 Public Domain (Dedication)", "Public Domain Mark 1.0", "PDM".
    if tokens and tokens[0] in {"cc0", "pdm", "pd", "pdd"}:
        head, rest = tokens[0], tokens[1:]
        if head == "cc0" and rest and rest[0] == "1":  # "cc0-1.0" splits as cc0, 1.0 already
            rest = rest[1:]
        if rest and rest[0] in {"1.0", "1"}:
            version, rest = "1.0", rest[1:]
        if head == "cc0" and rest and rest[0] in {"pd", "pdd"}:  # "CC0 Public Domain", "CC0 1.0 Public Domain"
            rest = rest[1:]
        if rest:
            return OTHER
        if head == "cc0":
            return make_license("cc0", "1.0", CC0_URL)
        if head == "pdm":
            return make_license("pdm", "1.0", PDM_URL)
        if version is not None:  # "Public Domain 1.0" is not a real tool name
            return OTHER
        return make_license("pdm", None, None)
    elements: list[str] = []
    while tokens and tokens[0] in {"by", "sa", "nc", "nd"}:
        elements.append(tokens.pop(0))
    if not elements or elements[0] != "by":
        return OTHER
    if tokens and re.fullmatch(r"\d+(?:\.\d+)?", tokens[0]):
        version = tokens.pop(0)
    jurisdiction = None
    if tokens and version and re.fullmatch(r"[a-z]{2}|igo|scotland", tokens[0]):
        jurisdiction = tokens.pop(0)
    if tokens:
        return OTHER
    return _by_family(elements, version, jurisdiction)


def _from_name_text(text: str) -> License:
    # "Attribution 4.0 International (CC BY 4.0)": both halves must name the same license.
    if m := re.fullmatch(r"(.+?)\s*\(([^()]+)\)\s*", text):
        outer, inner = _from_name(m.group(1)), _from_name(m.group(2))
        return inner if _same_license(outer, inner) else OTHER
    return _from_name(text)


def _same_license(a: License, b: License) -> bool:
    """Two statements name one open license: same id, and same version where both give one.

    A bare "Public domain" name (pdm, no URL) agrees with either public-domain tool (CC0 or the Mark).
    """
    if not (a.is_open and b.is_open):
        return False
    if a.license_id != b.license_id:
        generic = {x.license_id for x in (a, b) if x.license_id == "pdm" and x.url is None}
        return bool(generic) and {a.license_id, b.license_id} <= {"cc0", "pdm"}
    return a.version is None or b.version is None or a.version == b.version


def normalize(text: str | None) -> License:
    """The canonical license of one license statement (a URL, a name, or a name beside its URL); strict."""
    if text is None:
        return OTHER
    text = " ".join(str(text).split())  # any Unicode blank (NBSP, ...) is a plain space
    if not text or not text.isascii():  # look-alike letters from other scripts never count
        return OTHER
    words = text.split(" ")
    urls = [i for i, w in enumerate(words) if _is_url(w.strip("()[]<>\"',;"))]
    if not urls:
        return _from_name_text(text)
    if len(urls) > 1:
        return OTHER  # two URLs: in doubt
    by_url = _from_url(words[urls[0]].strip("()[]<>\"',;").rstrip("."))
    rest = " ".join(w for i, w in enumerate(words) if i != urls[0])
    if not by_url.is_open or all(w.strip(":-.").lower() in _URL_FILLER for w in rest.split()):
        return by_url
    # Free text beside the URL must name the same license; anything else ("not", "all rights
    # reserved", "NonCommercial" beside a BY URL) could be a restriction: never upgrade it.
    return by_url if _same_license(_from_name_text(rest), by_url) else OTHER


def normalize_pair(name: str | None, version: str | None) -> License:
    """Openverse-style split fields: license "by-sa", license_version "2.0"."""
    if not name:
        return OTHER
    return normalize(f"{name} {version}" if version else name)


# Words by which free text limits what a license URL beside it grants.
_RESTRICTION = re.compile(
    r"all\s+rights\s+reserved|non[\s-]*commercial|no[\s-]*deriv|\b(?:nc|nd|not|no|never|except|only|prohibit\w*"
    r"|forbid\w*|permission|proprietary|restrict\w*)\b", re.IGNORECASE)  # not "some rights reserved": CC's own


def restricts(text: str | None) -> bool:
    """Whether free text (a copyright notice, dc:rights) says something that narrows a license."""
    return bool(text) and bool(_RESTRICTION.search(str(text)))


# ---- a record's license -------------------------------------------------------
class LicenseRejected(ValueError):
    """A record's license is not usable: `reason` is license:missing, license:other or license:conflict."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _shown(text: str) -> str:
    return repr(text[:200])  # repr: control characters and lone surrogates come out escaped


def _described(lic: License) -> str:
    return f"{lic.license_id} {lic.version}" if lic.version else lic.license_id


def license_of(name: str | None = None, url: str | None = None, what: str = "license") -> License:
    """The open license a record states by `name` and/or `url`; every source goes through here.

    Raises `LicenseRejected`: license:missing when neither is given, license:other when what is
    given is not a known open license, license:conflict when name and URL disagree (naming both).
    """
    name = " ".join(str(name).split()) if name is not None else ""
    url = " ".join(str(url).split()) if url is not None else ""
    if not name and not url:
        raise LicenseRejected("license:missing", f"no {what} in the record")
    if not (name and url):
        text = name or url
        lic = normalize(text)
        if not lic.is_open:
            raise LicenseRejected("license:other", f"{what} {_shown(text)} is not a known open license")
        return lic
    by_name, by_url = normalize(name), normalize(url)
    if _same_license(by_name, by_url):
        return by_url if by_url.version or not by_name.version else by_name
    if not by_name.is_open and not by_url.is_open:
        raise LicenseRejected("license:other", f"{what} name {_shown(name)} and URL {_shown(url)} "
                                               "are not a known open license")
    raise LicenseRejected("license:conflict", f"{what} name {_shown(name)} ({_described(by_name)}) disagrees "
                                              f"with URL {_shown(url)} ({_described(by_url)})")
