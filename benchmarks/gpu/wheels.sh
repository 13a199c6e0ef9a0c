#!/usr/bin/env bash
# Fetch, where there is network, the wheels the lent GPU machine lacks (benchmarks/gpu/wheels.txt) into
# <repo>/.whl/ (git-ignored), for CPython 3.12 on Linux x86_64; benchmarks/gpu/run.sh installs them there.
# Then: remove every other wheel from .whl/ (one version of each travels), check each wheel's own
# Requires-Dist against wheels.txt and image-packages.txt, and print what travels: .whl/ plus the git
# working tree (tracked and untracked-not-ignored files), exit 1 over the device tool's 64 MiB.
#   bash benchmarks/gpu/wheels.sh        # from anywhere; PYTHON=python3.12 to pick the pip that runs
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LIST="$HERE/wheels.txt"
IMAGE="$HERE/image-packages.txt"
DEST="$ROOT/.whl"
PY="${PYTHON:-python3}"
LIMIT_MIB=64

# the pins of wheels.txt, comments and blank lines dropped
mapfile -t PINS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$')
[ "${#PINS[@]}" -gt 0 ] || { echo "wheels.sh: no pins in $LIST"; exit 1; }
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${PINS[@]}"

"$PY" - "$LIST" "$IMAGE" "$DEST" "$ROOT" "$LIMIT_MIB" <<'PY'
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version

list_path, image_path, dest, root, limit_mib = sys.argv[1:]
dest, root = Path(dest), Path(root)


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(path):
    for line in Path(path).read_text().splitlines():
        body, _, comment = line.partition("#")
        if body.strip():
            yield body.strip(), comment.strip()


pins = {}
for body, _ in entries(list_path):
    name, _, version = body.partition("==")
    pins[norm(name)] = version.strip()
image = {}  # name -> version seen there, or None
for body, comment in entries(image_path):
    seen = re.match(r"seen (\S+)", comment)
    image[norm(body)] = seen.group(1) if seen else None

# one wheel per pin; anything else in .whl/ goes (an older pin, a stray download)
kept, problems = {}, []
for whl in sorted(dest.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    if pins.get(norm(name)) == version and norm(name) not in kept:
        kept[norm(name)] = whl
    else:
        print(f"wheels.sh: removing {whl.name} (not in wheels.txt)")
        whl.unlink()
for name in sorted(set(pins) - set(kept)):
    problems.append(f"no wheel for {name}=={pins[name]}")

# each wheel's own needs, markers read for CPython 3.12 on Linux x86_64
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
unknown = []
for name, whl in sorted(kept.items()):
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = norm(req.name)
        have = pins.get(dep) or image.get(dep)
        if dep not in pins and dep not in image:
            problems.append(f"{name}=={pins[name]} needs {req}: neither carried nor in the image")
        elif have is None:
            if req.specifier:
                unknown.append(f"{name} needs {req} (the image's version is not known)")
        elif req.specifier and not req.specifier.contains(Version(have), prereleases=True):
            where = "carried" if dep in pins else "the image's"
            problems.append(f"{name}=={pins[name]} needs {req}, {where} is {have}")
for line in unknown:
    print(f"wheels.sh: note: {line}")

# what travels: .whl/ and the git working tree
files = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
                       check=True, capture_output=True).stdout.decode().split("\0")
tree = sum((root / f).stat().st_size for f in files if f and (root / f).is_file())
wheels = sum(w.stat().st_size for w in kept.values())
mib = 2 ** 20
print(f"wheels.sh: .whl/ {len(kept)} wheels, {wheels / mib:.1f} MiB; working tree {tree / mib:.1f} MiB; "
      f"together {(wheels + tree) / mib:.1f} MiB of {limit_mib} MiB")
if wheels + tree > int(limit_mib) * mib:
    problems.append(f"together over the {limit_mib} MiB a device call carries")
for p in problems:
    print(f"wheels.sh: {p}")
sys.exit(1 if problems else 0)
PY
