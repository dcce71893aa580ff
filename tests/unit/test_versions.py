"""The worker refuses to start, in one line, on a Faust, mode or aiokafka version
outside the range the overrides were tested with (app/overrides/versions.py)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from app.__main__ import main
from app.overrides import versions

ROOT = Path(__file__).parents[2]


def installed(monkeypatch, name: str, version: str | None) -> None:
    """Make `name` look installed at `version` (None: not installed)."""
    real = metadata.version

    def version_of(distribution: str) -> str:
        if distribution != name:
            return real(distribution)
        if version is None:
            raise metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(metadata, "version", version_of)


def test_the_installed_versions_are_the_tested_ones():
    versions.check()


def test_the_tested_ranges_are_pyproject_s_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        pinned[requirement.name] = requirement.specifier
    assert set(versions.tested()) == set(versions.GUARDED)
    assert versions.tested() == {name: pinned[name] for name in versions.GUARDED}


def bounds(name: str) -> tuple[str, str]:
    """The lowest tested version of `name` and the first past its range."""
    specs = {spec.operator: spec.version for spec in versions.tested()[name]}
    return specs[">="], specs["<"]


@pytest.mark.parametrize("name", sorted(versions.GUARDED))
@pytest.mark.parametrize("where", ["below", "past"])
def test_a_version_outside_the_range_stops_the_worker_in_one_line(monkeypatch, name, where):
    low, high = bounds(name)
    found = "0.0.1" if where == "below" else high + ".0"
    installed(monkeypatch, name, found)
    with pytest.raises(SystemExit) as stopped:
        main([])  # before settings, topics or Kafka: nothing else is needed
    message = stopped.value.code
    assert isinstance(message, str)  # printed to stderr, exit status 1
    assert "\n" not in message
    assert message.startswith(f"cameleer-merger: {name} {found} is installed")
    assert f"tested with {name} {versions.tested()[name]} only" in message
    assert f">={low}" in message and f"<{high}" in message


@pytest.mark.parametrize(
    "found, accepted",
    [
        ("0.14.0", True),
        ("0.14", True),
        ("0.14.7", True),
        ("0.14.0.post1", True),
        ("0.13.9", False),
        ("0.15.0", False),
        ("0.15.0rc1", False),  # a pre-release is no tested release
        ("0.14.1.dev3", False),
        ("0.14.0+patched", False),  # a local build is no tested release
        (None, False),  # not installed
    ],
)
def test_the_range_takes_releases_from_the_lowest_up_to_the_next_minor(
    monkeypatch, found, accepted
):
    installed(monkeypatch, "aiokafka", found)
    if accepted:
        versions.check()
    else:
        with pytest.raises(
            versions.UntestedVersion, match=re.escape(f"aiokafka {found or 'none'} is")
        ):
            versions.check()
