"""The lock files in locks/ still match pyproject.toml: every requirement of a set is pinned by a line
of its lock that satisfies it, torch stays out, and the installers read the locks. Offline and fast;
when it fails, run scripts/lock.sh and commit the locks."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402  (scripts/lock.py: the sets and how they are made)


def _pins(path: Path) -> list[Requirement]:
    """The `name==version ; marker` lines of a lock (comments and `# via` lines skipped)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def _unsatisfied(requirements: list[str], pins: list[Requirement]) -> list[str]:
    """Requirements (under this interpreter's markers) that no applicable exact pin satisfies."""
    by_name: dict[str, list[str]] = {}
    for pin in pins:
        if pin.marker is None or pin.marker.evaluate():
            (spec,) = pin.specifier
            assert spec.operator == "==", f"{pin} is not an exact pin"
            by_name.setdefault(canonicalize_name(pin.name), []).append(spec.version)
    problems = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        versions = by_name.get(canonicalize_name(req.name), [])
        if len(versions) != 1 or not req.specifier.contains(versions[0], prereleases=True):
            problems.append(f"{line} (lock: {versions or 'missing'})")
    return problems


@pytest.mark.parametrize("name", sorted(lock.SETS))
def test_lock_satisfies_pyproject(name: str) -> None:
    path = lock.lock_path(name)
    assert path.is_file(), f"{path} is missing: run scripts/lock.sh"
    problems = _unsatisfied(lock.requirements(lock.SETS[name]), _pins(path))
    assert not problems, f"{path.name} does not satisfy pyproject.toml (run scripts/lock.sh): {problems}"


@pytest.mark.parametrize("name", sorted(lock.SETS))
def test_lock_leaves_out_torch(name: str) -> None:
    names = {canonicalize_name(pin.name) for pin in _pins(lock.lock_path(name))}
    assert not names & lock.UNLOCKED, f"{name}.txt pins {names & lock.UNLOCKED}"
    assert not any(n.startswith("nvidia-") for n in names) or "gpu" in lock.SETS[name], (
        f"{name}.txt pins CUDA libraries that only torch's default build needs"
    )


def test_unsatisfied_names_a_stale_pin() -> None:
    """The check itself: a pin outside the range, a missing package and a duplicate are reported."""
    pins = [Requirement("fastapi==0.100.0"), Requirement("numpy==2.0.0"), Requirement("numpy==2.1.0")]
    problems = _unsatisfied(["fastapi>=0.110", "numpy>=1.26", "redis>=5", "pywin32; sys_platform == 'never'"], pins)
    assert [p.split()[0] for p in problems] == ["fastapi>=0.110", "numpy>=1.26", "redis>=5"]


def test_installers_read_the_locks() -> None:
    """setup.sh and every image install from a lock that exists (and the same torch pin file)."""
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert '-r "$lock"' in setup and "locks/${extras//,/+}.txt" in setup and "-r locks/torch.txt" in setup
    for dockerfile in sorted((ROOT / "docker").glob("*.Dockerfile")):
        used = re.findall(r"locks/([\w+]+)\.txt", dockerfile.read_text(encoding="utf-8"))
        assert used, f"{dockerfile.name} installs from no lock"
        for name in used:
            assert (ROOT / "locks" / f"{name}.txt").is_file(), f"{dockerfile.name} names a missing locks/{name}.txt"


def test_aisfx_is_pinned_alike() -> None:
    """aisfx stays outside the locks (its declared dependencies are outdated): setup.sh and the demo
    image install the same version of it."""
    pin = re.compile(r"aisfx==[\w.]+")
    pins = {
        path.name: pin.findall(path.read_text(encoding="utf-8"))
        for path in (ROOT / "scripts" / "setup.sh", ROOT / "docker" / "demo.Dockerfile")
    }
    assert all(len(found) == 1 for found in pins.values()) and len({found[0] for found in pins.values()}) == 1, pins
