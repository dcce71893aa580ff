"""The versions of Faust, mode and aiokafka the overrides were taken from and tested with.

Every module of app.overrides replaces or copies code of these three packages
and reads their private attributes (tests/unit/test_upstream.py lists what). A
version outside the tested ranges may have moved any of it, and the first sign
would be a wrong result: records made visible by a fenced worker, a restore that
skips records. The ranges are the worker's own requirements (pyproject.toml, as
installed); the worker refuses to start on a version outside them (`check`,
called by app.__main__), even when pip was told to ignore them.
docs/upgrading.md says how to move a range.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

GUARDED = ("faust-streaming", "mode-streaming", "aiokafka")
DISTRIBUTION = "cameleer-merger"


class UntestedVersion(RuntimeError):
    """An installed Faust, mode or aiokafka outside the tested range, said in one line."""


def tested() -> dict[str, SpecifierSet]:
    """The tested range of each guarded package: the worker's own requirement on it."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise UntestedVersion(
            f"{DISTRIBUTION} is not installed, so its tested versions are unknown "
            "(pip install -e .)"
        ) from None
    ranges = {}
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name in GUARDED and requirement.marker is None:
            ranges[requirement.name] = requirement.specifier
    return ranges


def check() -> None:
    """Raise UntestedVersion, naming the package, the found and the tested versions.

    Pre-releases, development and local versions are outside every range."""
    for name, specifier in tested().items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            found = "none"
        if not _within(found, specifier):
            raise UntestedVersion(
                f"{name} {found} is installed, but this worker is tested with {name} "
                f"{specifier} only (pyproject.toml; docs/upgrading.md)"
            )


def _within(found: str, specifier: SpecifierSet) -> bool:
    try:
        version = Version(found)
    except InvalidVersion:  # "none", or not a version pip would install
        return False
    # a pre-release, development or local build is no tested release
    return version.local is None and specifier.contains(version, prereleases=False)
