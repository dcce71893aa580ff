"""The versions of Faust, mode and aiokafka the overrides were taken from and tested with.

Every module of app.overrides replaces or copies code of these three packages
and reads their private attributes (tests/unit/test_upstream.py lists what). A
version outside these ranges may have moved any of it, and the first sign would
be a wrong result: records made visible by a fenced worker, a restore that
skips records. The worker refuses to start on one (`check`, called by
app.__main__); pyproject.toml pins the same ranges (a unit test keeps them
equal). docs/upgrading.md says how to move a range.
"""

from __future__ import annotations

import re
from importlib import metadata

# distribution: (lowest tested version, first version past the range)
TESTED: dict[str, tuple[str, str]] = {
    "faust-streaming": ("0.15.3", "0.16"),
    "mode-streaming": ("0.7.1", "0.8"),
    "aiokafka": ("0.14.0", "0.15"),
}


class UntestedVersion(RuntimeError):
    """An installed Faust, mode or aiokafka outside the tested range, said in one line."""


def specifier(name: str) -> str:
    """The tested range in pip's words, as pyproject.toml says it: `>=0.14.0,<0.15`."""
    low, high = TESTED[name]
    return f">={low},<{high}"


def _release(version: str) -> tuple[int, ...] | None:
    """The release numbers of a version (`0.14.0` -> (0, 14)); None for a
    pre-release, a development or a local version, which no range here includes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)*)(?:\.post\d+)?", version)
    if not match:
        return None
    release = [int(part) for part in match.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:  # 0.14 == 0.14.0
        release.pop()
    return tuple(release)


def _within(version: str, low: str, high: str) -> bool:
    release = _release(version)
    return release is not None and _release(low) <= release < _release(high)


def check() -> None:
    """Raise UntestedVersion, naming the package, the found and the tested versions."""
    for name, (low, high) in TESTED.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            found = "none"
        if not _within(found, low, high):
            raise UntestedVersion(
                f"{name} {found} is installed, but this worker is tested with {name} "
                f"{specifier(name)} only (app/overrides/versions.py; docs/upgrading.md)"
            )
