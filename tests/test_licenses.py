"""opencanvas.licenses.normalize: the forms real sources use, and what must never become open."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencanvas.licenses import LICENSE_FLAGS, LICENSE_IDS, normalize, normalize_pair

TABLE = [
    # CC URLs: scheme, www, trailing slash, jurisdiction ports, deed/legalcode suffixes
    ("http://creativecommons.org/licenses/by-nc-sa/2.0/", "cc-by-nc-sa", "2.0"),
    ("https://creativecommons.org/licenses/by/4.0", "cc-by", "4.0"),
    ("creativecommons.org/licenses/by-sa/2.0/de/", "cc-by-sa", "2.0"),
    ("//www.creativecommons.org/licenses/by-nd/3.0/deed.fr", "cc-by-nd", "3.0"),
    ("https://creativecommons.org/licenses/by-nc-nd/4.0/legalcode", "cc-by-nc-nd", "4.0"),
    ("http://creativecommons.org/licenses/by-nd-nc/1.0/", "cc-by-nc-nd", "1.0"),
    ("https://creativecommons.org/licenses/by/3.0/igo/", "cc-by", "3.0"),
    ("https://creativecommons.org/publicdomain/zero/1.0/deed.en", "cc0", "1.0"),
    ("http://creativecommons.org/publicdomain/mark/1.0/", "pdm", "1.0"),
    ("http://web.resource.org/cc/PublicDomain", "pdm", None),
    ("http://creativecommons.org/licenses/publicdomain/", "pdm", None),
    # YFCC100M license names
    ("Attribution License", "cc-by", None),
    ("Attribution-ShareAlike License", "cc-by-sa", None),
    ("Attribution-NonCommercial License", "cc-by-nc", None),
    ("Attribution-NonCommercial-ShareAlike License", "cc-by-nc-sa", None),
    ("Attribution-NoDerivs License", "cc-by-nd", None),
    ("Attribution-NonCommercial-NoDerivs License", "cc-by-nc-nd", None),
    # short names (Wikimedia, Openverse, sidecars)
    ("CC BY-SA 4.0", "cc-by-sa", "4.0"),
    ("CC-BY-NC-ND-3.0", "cc-by-nc-nd", "3.0"),
    ("cc-by-sa-3.0-de", "cc-by-sa", "3.0"),
    ("CC BY 2.5", "cc-by", "2.5"),
    ("Creative Commons Attribution-Share Alike 3.0 Unported", "cc-by-sa", "3.0"),
    ("Attribution-NoDerivatives 4.0 International", "cc-by-nd", "4.0"),
    ("by-nc", "cc-by-nc", None),
    ("CC0 1.0", "cc0", "1.0"),
    ("CC0", "cc0", "1.0"),
    ("cc0-1.0", "cc0", "1.0"),
    ("Public Domain Mark 1.0", "pdm", "1.0"),
    ("Public domain", "pdm", None),
    ("Attribution 4.0 International (CC BY 4.0)", "cc-by", "4.0"),
    ("Attribution-ShareAlike 4.0 International (CC BY-SA 4.0)", "cc-by-sa", "4.0"),
    # never open
    ("CC BY 4.0 (via Flickr)", "other", None),
    ("Attribution 4.0 International (CC BY-NC 4.0)", "other", None),
    ("GPL", "other", None),
    ("GNU General Public License v2", "other", None),
    ("http://creativecommons.org/licenses/GPL/2.0/", "other", None),
    ("https://www.gnu.org/licenses/fdl-1.3.html", "other", None),
    ("GFDL", "other", None),
    ("All Rights Reserved", "other", None),
    ("", "other", None),
    ("   ", "other", None),
    (None, "other", None),
    ("CC BY 7.0", "other", None),
    ("CC BY-SA-ND 4.0", "other", None),
    ("NC-SA", "other", None),
    ("creativecommons.org/licenses/sampling+/1.0/", "other", None),
    ("No known copyright restrictions", "other", None),
    ("by 4.0 banana", "other", None),
]


@pytest.mark.parametrize(("text", "license_id", "version"), TABLE)
def test_table(text: str | None, license_id: str, version: str | None) -> None:
    lic = normalize(text)
    assert (lic.license_id, lic.version) == (license_id, version)


def test_canonical_url_keeps_jurisdiction() -> None:
    assert normalize("http://creativecommons.org/licenses/by-sa/2.0/de/deed.de").url == \
        "https://creativecommons.org/licenses/by-sa/2.0/de/"
    assert normalize("CC BY 4.0").url == "https://creativecommons.org/licenses/by/4.0/"


def test_openverse_pair() -> None:
    assert normalize_pair("by-sa", "2.0").license_id == "cc-by-sa"
    assert normalize_pair("cc0", "1.0").license_id == "cc0"
    assert normalize_pair(None, "2.0").license_id == "other"


# ---- properties --------------------------------------------------------------
CODES = {"by": "cc-by", "by-sa": "cc-by-sa", "by-nc": "cc-by-nc", "by-nc-sa": "cc-by-nc-sa",
         "by-nd": "cc-by-nd", "by-nc-nd": "cc-by-nc-nd"}


@given(
    code=st.sampled_from(sorted(CODES)),
    version=st.sampled_from(["1.0", "2.0", "2.5", "3.0", "4.0"]),
    scheme=st.sampled_from(["", "http://", "https://", "//"]),
    www=st.booleans(),
    jurisdiction=st.sampled_from(["", "de", "fr", "jp", "us"]),
    suffix=st.sampled_from(["", "deed.en", "deed.de", "legalcode", "deed.zh_TW"]),
    slash=st.booleans(),
    upper=st.booleans(),
)
def test_any_url_variant_normalises_to_the_same_license(code, version, scheme, www, jurisdiction, suffix,
                                                        slash, upper) -> None:
    url = f"{scheme}{'www.' if www else ''}creativecommons.org/licenses/{code}/{version}/"
    url += f"{jurisdiction}/" if jurisdiction else ""
    url += suffix
    url = url if (slash or suffix) else url.rstrip("/")
    url = url.upper() if upper else url
    lic = normalize(url)
    assert (lic.license_id, lic.version) == (CODES[code], version)


@given(code=st.sampled_from(sorted(CODES)), version=st.sampled_from(["2.0", "3.0", "4.0"]),
       sep=st.sampled_from([" ", "-", "_"]), prefix=st.sampled_from(["CC", "cc", "Creative Commons"]))
def test_short_name_variants(code: str, version: str, sep: str, prefix: str) -> None:
    name = f"{prefix}{sep}{code.upper().replace('-', sep)}{sep}{version}"
    assert normalize(name).license_id == CODES[code]


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_garbage_is_never_open(text: str) -> None:
    # Random text only counts as open if it literally spells a license; those spellings need
    # "by"/"cc0"/"public domain"/"pd"/a CC host, which random text of this alphabet almost never
    # contains. Either it is `other`, or the text does contain such a marker.
    lic = normalize(text)
    if lic.license_id != "other":
        low = text.lower()
        assert any(m in low for m in ("by", "cc0", "public", "pd", "creativecommons", "attribution"))


@given(st.one_of(st.none(), st.text(max_size=80), st.sampled_from([t for t, _, _ in TABLE])))
def test_flags_follow_license_id(text: str | None) -> None:
    lic = normalize(text)
    assert lic.license_id in LICENSE_IDS
    assert (lic.commercial_ok, lic.derivatives_ok, lic.share_alike, lic.attribution_required) == \
        LICENSE_FLAGS[lic.license_id]
    assert lic.is_open == (lic.license_id != "other")
    if "nc" in lic.license_id.split("-"):
        assert not lic.commercial_ok
    if "nd" in lic.license_id.split("-"):
        assert not lic.derivatives_ok
    if lic.license_id == "other":
        assert not lic.commercial_ok and not lic.derivatives_ok and lic.url is None


@given(st.sampled_from(["GPL", "GFDL", "All Rights Reserved", "LGPL", "MIT", "Apache-2.0", "proprietary"]),
       st.sampled_from(["", " 2.0", "-3.0", " v3", " License"]))
def test_non_cc_licenses_stay_other(name: str, suffix: str) -> None:
    assert normalize(name + suffix).license_id == "other"
