"""Facts about the host a build runs on: Jetson L4T / JetPack release, host name. Pure Python.

``/etc/nv_tegra_release`` on a Jetson starts like::

    # R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025

which is L4T 36.4.3 (JetPack 6.2).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
_RELEASE_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", re.IGNORECASE)


def parse_l4t(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'; None when the text is not an L4T release line."""
    m = _RELEASE_RE.search(text or "")
    if not m:
        return None
    return f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3) or 0)}"


def read_l4t(path: str | Path = NV_TEGRA_RELEASE) -> str | None:
    """The L4T release of this Jetson, or None on any other host (or an unreadable file)."""
    try:
        return parse_l4t(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def parse_jetpack_package_version(version: str) -> str | None:
    """dpkg version of the nvidia-jetpack package ('6.2+b77', '5.1.2-b104') -> '6.2' / '5.1.2'."""
    m = re.match(r"^\s*(\d+(?:\.\d+){1,2})", version or "")
    return m.group(1) if m else None


def read_jetpack(l4t: str | None) -> str | None:
    """JetPack release: the installed nvidia-jetpack package, else the target catalog's JetPack row for
    this L4T release (containers usually lack the nvidia-jetpack package)."""
    if l4t is None:
        return None
    dpkg = shutil.which("dpkg-query")
    if dpkg:
        try:
            out = subprocess.run([dpkg, "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True,
                                 timeout=10, check=False)
            found = parse_jetpack_package_version(out.stdout) if out.returncode == 0 else None
            if found:
                return found
        except (OSError, subprocess.SubprocessError):
            pass
    from .targets import jetpack_for_l4t

    row = jetpack_for_l4t(l4t)
    return row.version if row is not None else None


def host_name() -> str:
    return socket.gethostname()
