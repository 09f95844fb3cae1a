"""Which release of a source was ingested, where the toolkit can tell.

The Open Clip Art Library comes from Debian's `openclipart-svg` package, so its
version is the installed package's (`dpkg-query`). Other sources carry no
version the toolkit can read: "unknown", never a guess.
"""

from __future__ import annotations

import subprocess

UNKNOWN = "unknown"
DEBIAN_PACKAGES = {"openclipart": "openclipart-svg"}


def debian_package_version(package: str) -> str | None:
    """The installed version of a Debian package, or None (not installed, or no dpkg on this machine)."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else None


def source_version(source: str) -> str:
    """'Debian package openclipart-svg 0.18+dfsg-19' for the clip art; 'unknown' where it cannot be told."""
    package = DEBIAN_PACKAGES.get(source)
    version = debian_package_version(package) if package else None
    return f"Debian package {package} {version}" if version else UNKNOWN
