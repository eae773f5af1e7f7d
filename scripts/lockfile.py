"""Write and compare the lock (constraints.txt): the exact versions of one environment the suite passed in.

Used by scripts/refresh-lock.sh; run by hand it prints what differs between the lock and an environment:

    python scripts/lockfile.py diff constraints.txt .venv-latest/bin/python
    python scripts/lockfile.py write constraints.txt .venv-latest/bin/python
"""

import argparse
import platform
import re
import subprocess
import sys
from pathlib import Path

HEADER = """\
# The lock: every package of every extra at the exact version the test suite last passed with.
# Written by `bash scripts/refresh-lock.sh` (which installs the newest versions pyproject.toml allows into a
# scratch venv, runs the suite there and writes this file only when it passes). Do not edit by hand.
# scripts/setup-env.sh installs from it with `pip install --constraint`, so the README's two commands and CI
# install exactly this; pyproject.toml keeps the ranges the code supports.
# Environment it was tested in: Python {python}, {machine}.
"""
LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read(path: Path) -> dict[str, str]:
    """The pins of a lock file: canonical name -> version."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = LINE.match(line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def frozen(python: str, skip: str = "llava-codebook") -> dict[str, str]:
    """Every distribution installed in `python`'s environment (build tools included, the project itself excluded),
    with local version labels dropped: `torch==2.13.0` also matches the `2.13.0+cpu` build, and the same lock then
    serves a machine whose index carries the build without the label."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    pins = {}
    for line in out.splitlines():
        match = LINE.match(line.strip())
        if match and canonical(match.group(1)) != skip:
            pins[canonical(match.group(1))] = match.group(2).split("+", 1)[0]
    return pins


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before != after:
            lines.append(f"  {name}: {before or '(absent)'} -> {after or '(removed)'}")
    return lines


def write(path: Path, pins: dict[str, str], python: str) -> None:
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"], check=True, capture_output=True, text=True
    ).stdout.strip()
    body = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    header = HEADER.format(python=version, machine=f"{platform.system()} {platform.machine()}")
    Path(path).write_text(header + body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("diff", "write"))
    parser.add_argument("lock", type=Path)
    parser.add_argument("python", help="the interpreter of the environment to read")
    args = parser.parse_args(argv)
    new = frozen(args.python)
    if args.action == "write":
        write(args.lock, new, args.python)
        print(f"Wrote {args.lock} ({len(new)} packages).")
        return 0
    changes = diff(read(args.lock) if args.lock.exists() else {}, new)
    print(f"{len(changes)} package(s) differ from {args.lock}:" if changes else f"Same versions as {args.lock}.")
    print("\n".join(changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
