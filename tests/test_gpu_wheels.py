"""The wheels carried to the lent GPU machine (benchmarks/gpu/wheels.txt) against its image's packages
(benchmarks/gpu/image-packages.txt) and wanserve's runtime requirements. No network: the requirements
are read from pyproject.toml and the installed distributions (importlib.metadata), with markers read
for that machine (CPython 3.12, Linux x86_64). A distribution not installed here (torchsde: the test
venv has no `wan` extra) is checked by name only; benchmarks/gpu/wheels.sh checks every downloaded
wheel's own Requires-Dist as well.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"
WHEELS = GPU / "wheels.txt"
IMAGE = GPU / "image-packages.txt"
EXTRAS = ("wan",)  # the runtime extras the GPU suite runs
SUITE_NEEDS = {"torchao"}  # imported by the suite beyond wanserve's requirements (quantize = "fp8")
MACHINE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(path: Path) -> list[tuple[str, str]]:
    """(body, comment) of each line that is not blank or only a comment."""
    out = []
    for line in path.read_text().splitlines():
        body, _, comment = line.partition("#")
        if body.strip():
            out.append((body.strip(), comment.strip()))
    return out


def wheel_pins() -> list[tuple[str, str, str]]:
    pins = []
    for body, comment in entries(WHEELS):
        m = PIN.match(body)
        assert m, f"wheels.txt: {body!r} is not name==version"
        pins.append((m.group(1), m.group(2), comment))
    return pins


def image_names() -> list[str]:
    return [body for body, _ in entries(IMAGE)]


def applies(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**MACHINE, "extra": e}) for e in {""} | extras)


def runtime_requirements(image: set[str]) -> tuple[dict[str, str], set[str]]:
    """{normalized name: who asks for it} of every runtime requirement outside the image, walked
    through the installed distributions (not through the image's own packages: those bring theirs),
    and the names not installed here (not walked further)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    top = [Requirement(r) for r in project["dependencies"]]
    top += [Requirement(r) for e in EXTRAS for r in project["optional-dependencies"][e]]
    installed = md.distribution("wanserve").requires or []
    top += [r for r in map(Requirement, installed) if applies(r, set(EXTRAS))]
    todo = [(req, "wanserve") for req in top]
    needed: dict[str, str] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    absent: set[str] = set()
    while todo:
        req, via = todo.pop()
        name = normalize(req.name)
        if name in image:
            continue
        needed.setdefault(name, via)
        if (name, frozenset(req.extras)) in walked:
            continue
        walked.add((name, frozenset(req.extras)))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            absent.add(name)
            continue
        todo += [(r, name) for r in map(Requirement, dist.requires or []) if applies(r, set(req.extras))]
    return needed, absent


def test_lists_are_normalized_with_one_version_each():
    pins = wheel_pins()
    names = [name for name, _, _ in pins]
    assert [n for n in names if n != normalize(n)] == [], "wheels.txt: names not normalized (PEP 503)"
    assert sorted({n for n in names if names.count(n) > 1}) == [], "wheels.txt: a name pinned twice"
    image = image_names()
    assert [n for n in image if n != normalize(n)] == [], "image-packages.txt: names not normalized"
    assert sorted({n for n in image if image.count(n) > 1}) == [], "image-packages.txt: a name twice"
    assert "torch" in image and "numpy" in image


def test_no_wheel_duplicates_an_image_package():
    image = set(image_names())
    assert sorted(name for name, _, _ in wheel_pins() if name in image) == []


def test_every_runtime_requirement_is_carried_or_in_the_image():
    pinned = {name for name, _, _ in wheel_pins()}
    needed, _ = runtime_requirements(set(image_names()))
    missing = sorted(f"{name} (needed by {via})" for name, via in needed.items() if name not in pinned)
    assert missing == [], "benchmarks/gpu/wheels.txt lacks: " + ", ".join(missing)
    assert SUITE_NEEDS - pinned == set(), "the suite's own needs are not carried"


def test_every_wheel_is_needed_or_says_why():
    """A line the walk does not reach (the suite's needs; the needs of a package not installed here)
    names its reason first in its comment: `suite` or the carried package that needs it."""
    pins = wheel_pins()
    pinned = {name for name, _, _ in pins}
    needed, _ = runtime_requirements(set(image_names()))
    unexplained = []
    for name, _, comment in pins:
        reason = normalize(comment.split()[0].strip(":,")) if comment else ""
        if name not in needed and reason != "suite" and reason not in pinned:
            unexplained.append(name)
    assert unexplained == [], "wheels.txt: nothing needs these (a stale pin?): " + ", ".join(unexplained)


def test_wheels_sh_reads_wheels_txt():
    script = (GPU / "wheels.sh").read_text()
    assert "wheels.txt" in script
    hard_coded = [f"{n}=={v}" for n, v, _ in wheel_pins() if f"{n}=={v}" in script]
    assert hard_coded == [], "wheels.sh pins wheels itself: " + ", ".join(hard_coded)
    assert "/.whl/" in (REPO / ".gitignore").read_text().splitlines()
