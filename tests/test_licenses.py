"""opencanvas.licenses.normalize: the forms real sources use, and what must never become open."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencanvas.licenses import LICENSE_FLAGS, LICENSE_IDS, LicenseRejected, license_of, normalize, normalize_pair

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
    # issue 19: public-domain spellings that used to be over-quarantined
    ("CC-0", "cc0", "1.0"),
    ("cc 0 1.0", "cc0", "1.0"),
    ("CC0 Public Domain", "cc0", "1.0"),
    ("CC0 1.0 Public Domain Dedication", "cc0", "1.0"),
    # issue 19: laundering. A CC URL somewhere in the text no longer decides the license.
    ("All rights reserved, not https://creativecommons.org/licenses/by/4.0/", "other", None),
    ("Not https://creativecommons.org/licenses/by/4.0/", "other", None),
    ("Attribution-NonCommercial http://creativecommons.org/licenses/by/2.0/", "other", None),
    ("https://creativecommons.org/licenses/by/4.0/ for non-commercial use only", "other", None),
    ("https://evilcreativecommons.org/licenses/by/4.0/", "other", None),
    ("https://creativecommons.org.evil.com/licenses/by/4.0/", "other", None),
    ("https://evil.com/creativecommons.org/licenses/by/4.0/", "other", None),
    ("https://evil.com/?u=https://creativecommons.org/licenses/by/4.0/", "other", None),
    ("https://user@creativecommons.org/licenses/by/4.0/", "other", None),
    ("https://creativecommons.org:8443/licenses/by/4.0/", "other", None),
    ("https://creativecommons.org/licenses/by/4.0/?x=1", "other", None),
    ("https://creativecommons.org/licenses/by/4.0/#nc", "other", None),
    ("ftp://creativecommons.org/licenses/by/4.0/", "other", None),
    ("javascript://creativecommons.org/licenses/by/4.0/", "other", None),
    ("https://creativecommons.org/foo/licenses/by/4.0/", "other", None),
    ("https://creativecommons.org//licenses/by/4.0/", "other", None),
    ("https://creativecommons.org/licenses/by/4.0/ https://creativecommons.org/licenses/by-nc/4.0/", "other", None),
    # a URL beside filler words or beside its own name still counts
    ("Licensed under https://creativecommons.org/licenses/by/4.0/.", "cc-by", "4.0"),
    ("CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)", "cc-by", "4.0"),
    ("Attribution 4.0 International (CC BY 4.0) https://creativecommons.org/licenses/by/4.0/", "cc-by", "4.0"),
    ("CC BY\u00a04.0", "cc-by", "4.0"),
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


# ---- issue 19: license laundering ----------------------------------------------
NAMES = {"cc-by": "Attribution License", "cc-by-sa": "Attribution-ShareAlike License",
         "cc-by-nc": "Attribution-NonCommercial License", "cc-by-nc-sa": "Attribution-NonCommercial-ShareAlike License",
         "cc-by-nd": "Attribution-NoDerivs License", "cc-by-nc-nd": "Attribution-NonCommercial-NoDerivs License"}
URL_CODES = {v: k for k, v in CODES.items()}


def cc_url(license_id: str, version: str = "2.0") -> str:
    return f"http://creativecommons.org/licenses/{URL_CODES[license_id]}/{version}/"


@settings(max_examples=200)
@given(name_id=st.sampled_from(sorted(NAMES)), url_id=st.sampled_from(sorted(NAMES)),
       short=st.booleans(), version=st.sampled_from(["2.0", "3.0", "4.0"]))
def test_contradictory_name_and_url_is_a_conflict_naming_both(name_id: str, url_id: str, short: bool,
                                                              version: str) -> None:
    name = f"CC {URL_CODES[name_id].upper()} {version}" if short else NAMES[name_id]
    url = cc_url(url_id, version)
    if name_id == url_id:
        assert license_of(name, url).license_id == url_id
        return
    with pytest.raises(LicenseRejected) as e:
        license_of(name, url)
    assert e.value.reason == "license:conflict"
    assert repr(name) in e.value.detail and repr(url) in e.value.detail
    # and as one free-text statement the pair is never open
    assert normalize(f"{name} {url}").license_id == "other"


@given(name_version=st.sampled_from(["2.0", "3.0", "4.0"]), url_version=st.sampled_from(["2.0", "3.0", "4.0"]))
def test_versions_must_agree(name_version: str, url_version: str) -> None:
    url = cc_url("cc-by", url_version)
    if name_version == url_version:
        assert license_of(f"CC BY {name_version}", url).version == url_version
    else:
        with pytest.raises(LicenseRejected, match="license:conflict"):
            license_of(f"CC BY {name_version}", url)


@given(name=st.sampled_from(["All rights reserved", "all rights reserved", "proprietary", "GPL", "none", "x"]),
       url_id=st.sampled_from(sorted(NAMES)))
def test_a_restrictive_name_beside_an_open_url_is_a_conflict(name: str, url_id: str) -> None:
    """The Openverse repro: `license: all rights reserved` with a by/2.0 `license_url`."""
    with pytest.raises(LicenseRejected, match="license:conflict"):
        license_of(name, cc_url(url_id))


@settings(max_examples=300)
@given(
    scheme=st.sampled_from(["", "http://", "https://", "//", "HTTPS://"]),
    host=st.sampled_from([
        "evilcreativecommons.org", "creativecommons.org.evil.com", "creativecommons.org.", "creativecommons.com",
        "creativecommons.net", "creative-commons.org", "creativecommons-org.com", "www.creativecommons.org.evil",
        "wwwcreativecommons.org", "www2.creativecommons.org", "creativecommons.org:80", "creativecommons.org:443",
        "user@creativecommons.org", "creativecommons.org@evil.com", "evil.com#creativecommons.org",
        "evil.com?creativecommons.org", "evil.com\\creativecommons.org", "cr\u0435ativecommons.org",
        "creativecommons.\u043erg", "xn--creativecommns-8kb.org", "creativecommons.org\u200b",
        "sub.creativecommons.org", "creativecommons", "web.resource.org.evil.com",
    ]),
    code=st.sampled_from(sorted(CODES) + ["publicdomain-zero"]),
    prefix=st.sampled_from(["", "Licensed under ", "see "]),
)
def test_look_alike_hosts_never_count(scheme: str, host: str, code: str, prefix: str) -> None:
    path = "publicdomain/zero/1.0/" if code == "publicdomain-zero" else f"licenses/{code}/4.0/"
    url = f"{scheme}{host}/{path}"
    assert normalize(prefix + url).license_id == "other"
    with pytest.raises(LicenseRejected):
        license_of(None, url)


@settings(max_examples=200)
@given(url_id=st.sampled_from(["cc-by", "cc-by-sa"]),
       restriction=st.sampled_from(["All rights reserved", "not", "NOT", "non-commercial", "NonCommercial",
                                    "no derivatives", "NoDerivs", "except commercial use", "for personal use only",
                                    "with permission", "(c) all rights reserved", "NC", "ND", "BY-NC"]),
       before=st.booleans(), sep=st.sampled_from([" ", ", ", " - ", ": ", " ("]))
def test_free_text_with_a_restriction_is_never_upgraded(url_id: str, restriction: str, before: bool,
                                                       sep: str) -> None:
    url = cc_url(url_id, "4.0")
    text = f"{restriction}{sep}{url}" if before else f"{url}{sep}{restriction}"
    lic = normalize(text)
    assert lic.license_id == "other"
    with pytest.raises(LicenseRejected):
        license_of(text, None)


def test_public_domain_names_agree_with_either_public_domain_url() -> None:
    assert license_of("Public Domain Dedication", "https://creativecommons.org/publicdomain/zero/1.0/").license_id \
        == "cc0"
    assert license_of("Public Domain Mark", "https://creativecommons.org/publicdomain/mark/1.0/").license_id == "pdm"
    with pytest.raises(LicenseRejected, match="license:conflict"):
        license_of("CC0", "https://creativecommons.org/publicdomain/mark/1.0/")


def test_license_of_reasons() -> None:
    for name, url in ((None, None), ("", "  "), (None, "")):
        with pytest.raises(LicenseRejected, match="license:missing"):
            license_of(name, url)
    with pytest.raises(LicenseRejected, match="license:other"):
        license_of("GPL", None)
    with pytest.raises(LicenseRejected, match="license:other"):
        license_of("GPL", "https://www.gnu.org/licenses/gpl-3.0.html")
    # the URL keeps its jurisdiction; a name without a version takes the URL's
    lic = license_of("by-sa", "http://creativecommons.org/licenses/by-sa/2.0/de/")
    assert (lic.license_id, lic.version, lic.url) == ("cc-by-sa", "2.0", "https://creativecommons.org/licenses/by-sa/2.0/de/")
