"""The dependency locks in locks/: one pinned requirements file per install set, resolved by uv from
pyproject.toml, so the images and scripts/setup.sh install the same versions every day.

    scripts/lock.sh            # re-resolve every lock, keeping current pins where pyproject allows
    scripts/lock.sh --upgrade  # take the newest versions pyproject allows

Locks are universal (valid on every platform and Python >= 3.11: environment markers select the
lines). torch is left out of every lock: the registry's default torch wheel pulls gigabytes of CUDA
libraries, so scripts/setup.sh and docker/demo.Dockerfile install the CPU build from
locks/torch.txt first, and torch's own dependencies come with it. tests/test_locks.py checks that
every lock still satisfies pyproject.toml. uv resolves against its default index (UV_INDEX_URL or
UV_DEFAULT_INDEX point it elsewhere); the locks name versions only, so any index serving them installs them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
# Lock name -> the pyproject extras it installs besides the core dependencies.
SETS: dict[str, tuple[str, ...]] = {
    "core": (),  # docker/server.Dockerfile
    "gpu": ("gpu", "ray"),  # docker/precompute.Dockerfile: a GPU node of a Ray cluster, or one machine
    "train": ("train",),  # docker/demo.Dockerfile, scripts/setup.sh (the default, scripts/demo.sh)
    # scripts/setup.sh train,test (scripts/test.sh, CI); with the ray extra, so tests/test_precompute_ray.py runs
    "train+test": ("train", "test", "ray"),
}
# Installed outside the locks (see the module docstring).
UNLOCKED = {"torch"}
NEVER = "sys_platform == 'never'"


def lock_path(name: str) -> Path:
    return LOCKS / f"{name}.txt"


def requirements(extras: tuple[str, ...]) -> list[str]:
    """The pyproject requirements of the core plus `extras`, minus the unlocked packages."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [line for line in lines if Requirement(line).name not in UNLOCKED]


def compile_lock(name: str, upgrade: bool) -> None:
    """Resolve one set with uv into locks/NAME.txt (an existing file's pins are kept where possible).

    An unlocked package may still be a dependency of a locked one (sentence-transformers needs
    torch): uv is told to override it with a marker no platform has, which drops it and what only
    it needs from the resolution; the lines it then prints under that marker are removed."""
    uv = Path(sys.executable).parent / "uv"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    python = project["requires-python"].lstrip(">=")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp) / "overrides.txt"
        overrides.write_text("".join(f"{package} ; {NEVER}\n" for package in sorted(UNLOCKED)), encoding="utf-8")
        command = [
            str(uv),
            "pip",
            "compile",
            "-",
            "--universal",
            "--python-version",
            python,
            "--override",
            str(overrides),
            *(f"--no-emit-package={package}" for package in sorted(UNLOCKED)),
            "--custom-compile-command",
            "scripts/lock.sh",
            "--quiet",
            "-o",
            str(lock_path(name)),
        ]
        if upgrade:
            command.append("--upgrade")
        subprocess.run(command, input="\n".join(requirements(SETS[name])) + "\n", text=True, check=True, cwd=ROOT)
    lock = lock_path(name)
    lock.write_text(_drop_never(lock.read_text(encoding="utf-8")), encoding="utf-8")


def _drop_never(text: str) -> str:
    """The lock without requirements under the NEVER marker (and their `# via` lines)."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        if not line.startswith((" ", "#")):
            dropping = NEVER in line
        if not dropping:
            kept.append(line)
    return "".join(kept)


def main(argv: list[str]) -> int:
    LOCKS.mkdir(exist_ok=True)
    for name in SETS:
        compile_lock(name, upgrade="--upgrade" in argv)
        print(f"locked {lock_path(name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
