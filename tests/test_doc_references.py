"""Every reference to the design documents resolves inside the repository: a cited doc path
exists, a cited pitfall or section of docs/method.md and a quoted section of a doc exist, and
nothing points at notes outside the repository (the founding DESIGN.md, the research notes); and
docs/architecture.md names every module of each package, and none that is gone."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
METHOD = "docs/method.md"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt", ".sh", ".html", ".js", ".css"}
TEXT_NAMES = {"Dockerfile", "run"}

# A path to a Markdown file in the repository: docs/store.md, corpus/ATTRIBUTION.md, README.md.
DOC_PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.md)\b")
PITFALL = re.compile(r"\bpitfalls?\s+(\d+)(?:\s*(?:-|\u2013|and|,)\s*(\d+))?", re.IGNORECASE)
# `docs/method.md section 4.1` or `docs/method.md, section 6`.
METHOD_SECTION = re.compile(r"docs/method\.md,?\s+sections?\s+(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?")
# `docs/design.md, "Scoring"` or `docs/api.md "Colours"`: a heading of that document.
# Like DOC_PATH, it starts only where a path can: tried at each character of a long word (the
# 550 kB of a vendored script), it took 17 s.
QUOTED_SECTION = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.md),?\s+\"([^\"\n]+)\"")
OUTSIDE = [
    (re.compile(r"(?<![\w/-])DESIGN\.md"), "the founding DESIGN.md is docs/design.md in the repository"),
    (re.compile(r"psm-method\.md"), "the PSM notes are docs/method.md"),
    (re.compile(r"(?:tileserver-anchors|peers|offline-assets)\.md"), "research notes are not in the repository"),
    (re.compile(r"\.\./shared|/work/shared|\bshared/research\b"), "a path outside the repository"),
]
# The file that names bad references in order to check that they are caught.
SELF = {"tests/test_doc_references.py"}
# Markdown files a command writes (the corpus build's credits), named in code but not in git.
GENERATED = {"ATTRIBUTION.md"}


@cache
def tracked_text_files() -> tuple[str, ...]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return tuple(
        name
        for name in names
        if (Path(name).suffix in TEXT_SUFFIXES or Path(name).name in TEXT_NAMES)
        and not name.startswith(("server/static/maplibre/", "server/static/redoc/", "server/static/swagger-ui/"))
        and (REPO / name).is_file()
    )


def read(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8", errors="replace")


@cache
def sections(name: str) -> tuple[str, ...]:
    """A document's headings and its bold paragraph titles (`**Colours.** ...` in docs/api.md)."""
    lines = read(name).splitlines()
    titled = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
    return (*titled, *(m.group(1) for line in lines if (m := re.match(r"\*\*([^*]+?)\.?\*\*", line))))


@cache
def pitfall_numbers() -> frozenset[int]:
    return frozenset(int(m.group(1)) for m in re.finditer(r"^### Pitfall (\d+): ", read(METHOD), re.MULTILINE))


@cache
def method_sections() -> frozenset[str]:
    return frozenset(m.group(1) for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", read(METHOD), re.MULTILINE))


def titled(section: str, title: str) -> bool:
    """A section cited by its title or the title's start: "Sources" names "Sources: who recorded"."""
    return section == title or re.match(re.escape(title) + r"\W", section) is not None


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def resolve(path: str, source: str) -> Path | None:
    """The cited document: from the repository's root, or beside the citing file."""
    for candidate in (REPO / path, (REPO / source).parent / path):
        if candidate.is_file():
            return candidate
    return None


def cited_docs(name: str, text: str) -> list[tuple[int, str]]:
    """Markdown paths a file cites that must exist: paths with a folder, root documents named in
    capitals (README.md), and in Markdown also a neighbour's bare name (store.md)."""
    cited = []
    if name == METHOD:
        return []  # its paths name files of the authors' repository, as its introduction says
    for m in DOC_PATH.finditer(text):
        path = m.group(1)
        if path in GENERATED or any(pattern.search(path) for pattern, _ in OUTSIDE):
            continue  # an OUTSIDE reference is reported as such
        if "/" in path or path[:-3].isupper() or name.endswith(".md"):
            cited.append((m.start(), path))
    return cited


def context(name: str, text: str, offset: int) -> str:
    """Where a bare "pitfall N" may have named its document: in Markdown its section (from the
    heading above), in code the 300 characters before it (a comment or docstring)."""
    if name.endswith(".md"):
        heading = text.rfind("\n#", 0, offset)
        return text[heading + 1 if heading >= 0 else 0 : offset]
    return text[max(0, offset - 300) : offset]


def problems_in(name: str, text: str | None = None) -> list[str]:
    """Each reference of `name` (or of `text`, read as if it were that file) that does not resolve."""
    if name in SELF:
        return []  # it names bad references on purpose, to check that they are caught
    text = read(name) if text is None else text
    found = []
    for pattern, why in OUTSIDE:
        for m in pattern.finditer(text):
            found.append(f"{name}:{line_of(text, m.start())}: {m.group(0)!r}: {why}")
    for offset, path in cited_docs(name, text):
        if resolve(path, name) is None:
            found.append(f"{name}:{line_of(text, offset)}: {path} does not exist")
    for m in PITFALL.finditer(text):
        if name != METHOD and METHOD not in context(name, text, m.start()):
            found.append(f"{name}:{line_of(text, m.start())}: {m.group(0)!r} does not say where: cite {METHOD}")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        for number in range(low, high + 1):
            if number not in pitfall_numbers():
                found.append(f"{name}:{line_of(text, m.start())}: pitfall {number} is not in {METHOD}")
    for m in METHOD_SECTION.finditer(text):
        for section in filter(None, m.groups()):
            if section not in method_sections():
                found.append(f"{name}:{line_of(text, m.start())}: {METHOD} has no section {section}")
    for m in QUOTED_SECTION.finditer(text):
        path, title = m.groups()
        doc = resolve(path, name)
        if doc is not None and not any(titled(s, title) for s in sections(str(doc.relative_to(REPO)))):
            found.append(f"{name}:{line_of(text, m.start())}: {path} has no section {title!r}")
    return found


ARCHITECTURE = "docs/architecture.md"
# The packages whose every module docs/architecture.md's "What each package holds" says the role of.
PACKAGES = ("runtime", "store", "server", "precompute", "model", "corpus", "cli")
# A package's bullet there: "- `store/` (...): `format.py` (...), ..." up to the next bullet.
PACKAGE_BULLET = re.compile(r"^- `(\w+)/`(.*?)(?=^- `|^#|\Z)", re.MULTILINE | re.DOTALL)
MODULE_NAME = re.compile(r"`(\w+(?:\.py|/))`")


def package_entries(package: str) -> tuple[set[str], set[str]]:
    """A package's tracked modules and folders (`app.py`, `routes/`), and every name below it."""
    prefix = package + "/"
    paths = [name[len(prefix) :] for name in tracked_text_files() if name.startswith(prefix)]
    top = {p.split("/")[0] + "/" if "/" in p else p for p in paths}
    below = {part + "/" for p in paths for part in p.split("/")[:-1]} | {p.split("/")[-1] for p in paths}
    return {e for e in top if e.endswith((".py", "/")) and e != "__init__.py"}, below


def holdings_problems(text: str, entries: Callable[[str], tuple[set[str], set[str]]] = package_entries) -> list[str]:
    """Each module or folder of a package that its bullet does not name, and each name there that
    the package lacks: a module added, renamed or removed without saying what it now holds."""
    bullets = {m.group(1): m.group(2) for m in PACKAGE_BULLET.finditer(text)}
    found = []
    for package in PACKAGES:
        if package not in bullets:
            found.append(f"{ARCHITECTURE}: no bullet for {package}/")
            continue
        named = set(MODULE_NAME.findall(bullets[package]))
        held, below = entries(package)
        found += [f"{ARCHITECTURE}: {package}/{name} is not named under {package}/" for name in sorted(held - named)]
        found += [f"{ARCHITECTURE}: {package}/ holds no {name}" for name in sorted(named - below)]
    return found


def test_architecture_names_every_module_of_each_package() -> None:
    problems = holdings_problems(read(ARCHITECTURE))
    assert not problems, "\n".join(problems)


def test_the_holdings_check_catches_a_missing_and_a_stale_module() -> None:
    text = "".join(f"- `{p}/`: `a.py` (x), `old.py` (y)\n" for p in PACKAGES)
    problems = holdings_problems(text, lambda package: ({"a.py", "new.py"}, {"a.py", "new.py"}))
    assert f"{ARCHITECTURE}: runtime/new.py is not named under runtime/" in problems
    assert f"{ARCHITECTURE}: store/ holds no old.py" in problems
    assert holdings_problems("- `runtime/`: `a.py`\n", lambda package: ({"a.py"}, {"a.py"}))[0].endswith(
        "no bullet for store/"
    )


def test_method_has_the_twenty_pitfalls_and_its_sections() -> None:
    assert pitfall_numbers() == frozenset(range(1, 21))
    assert {"1", "2", "3", "4", "4.1", "5", "6", "7"} <= method_sections()


@pytest.mark.parametrize("name", tracked_text_files())
def test_references_resolve(name: str) -> None:
    problems = problems_in(name)
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_should() -> None:
    """The scanner itself: a file with each kind of bad reference yields a problem for each."""
    bad = (
        '"""See DESIGN.md and ../shared/research/psm-method.md section 2.\n'
        'docs/nope.md; docs/method.md, pitfall 21; docs/method.md section 9.9; docs/design.md, "No such"\n"""\n'
    )
    bare = "x = 1\n" * 60 + "# PSM's hour collides (pitfall 4)\n"  # no document named within reach
    text = "\n".join(problems_in("model/bad.py", bad) + problems_in("model/bare.py", bare))
    for expected in (
        "'DESIGN.md'",
        "'../shared'",
        "'psm-method.md'",
        "docs/nope.md does not exist",
        "pitfall 21 is not in",
        "no section 9.9",
        "no section 'No such'",
        "'pitfall 4' does not say where",
    ):
        assert expected in text, f"{expected!r} not reported in:\n{text}"
    good = 'docs/method.md, pitfall 13; docs/method.md section 4.1; docs/design.md, "Scoring"; docs/api.md'
    assert problems_in("model/good.py", good) == []
