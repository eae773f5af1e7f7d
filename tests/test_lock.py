"""The lock (constraints.txt): it pins every dependency the package and its extras declare, inside their ranges, and
the refresh command writes it only from an environment in which the suite passed."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# scripts/refresh-lock.sh runs the suite on the lock it is about to write, before it replaces constraints.txt.
LOCK_TEXT = Path(os.environ.get("LLAVA_CODEBOOK_LOCK", REPO_ROOT / "constraints.txt")).read_text()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK_TEXT.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, version = line.split("==")
        pins[canonicalize_name(name)] = version
    return pins


def declared_requirements() -> list[tuple[str, Requirement]]:
    """Every requirement of the package, of each extra (the extras' own references to the package left out), of the
    no-deps installs and of the build system, with where it is declared."""
    project = PROJECT["project"]
    found = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, requirements in project["optional-dependencies"].items():
        found += [(extra, Requirement(r)) for r in requirements if not r.startswith(project["name"])]
    for extra, requirements in PROJECT["tool"]["llava-codebook"]["no-deps"].items():
        found += [(f"no-deps {extra}", Requirement(r)) for r in requirements]
    found += [("build-system", Requirement(r)) for r in PROJECT["build-system"]["requires"]]
    return found


def test_every_line_of_the_lock_is_one_exact_pin_without_a_local_build_label():
    for line in LOCK_TEXT.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.!]*", line), line


def test_the_lock_pins_every_declared_dependency_inside_its_declared_range():
    pins = lock_pins()
    for where, requirement in declared_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} ({where}) is not in constraints.txt: run scripts/refresh-lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement} ({where})"
        )


def test_the_lock_pins_the_build_tools_and_the_cpu_torch_of_the_project_machines():
    pins = lock_pins()
    assert {"pip", "setuptools", "wheel"} <= set(pins)
    assert pins["torch"] == "2.13.0"  # `pip install torch==2.13.0` takes the CPU build on local disk
    assert "llava-codebook" not in pins  # the package itself is installed from the checkout


def test_the_lock_says_which_command_writes_it():
    assert "bash scripts/refresh-lock.sh" in LOCK_TEXT.splitlines()[1]


@pytest.mark.skipif(not os.environ.get("VIRTUAL_ENV") and sys.prefix == sys.base_prefix, reason="not in a venv")
def test_the_running_environment_is_the_locked_one_for_every_declared_dependency():
    """What `bash scripts/test.sh` installed is what the lock says (run from another environment, e.g. the drift
    check's scratch venv, this is skipped: that one holds the newest versions on purpose)."""
    if Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve():
        pytest.skip("not the project's .venv")
    from importlib.metadata import PackageNotFoundError, version

    pins = lock_pins()
    for where, requirement in declared_requirements():
        if where == "build-system" or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        try:
            installed = Version(version(requirement.name))
        except PackageNotFoundError:
            continue  # an extra this venv was not installed with
        assert installed.public == pins[canonicalize_name(requirement.name)], (requirement.name, str(installed))


# ------------------------------------------------------------------------------------ scripts/refresh-lock.sh
FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python3 and the scratch venv's python: records pip and pytest calls, answers pip freeze.
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"; cp "$0" "$3/bin/python"
  printf 'export PATH="%s/bin:$PATH"\n' "$3" >"$3/bin/activate"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ] && [ "$3" = "freeze" ]; then
  printf 'torch==2.13.0+cpu\ntransformers==9.9.9\n-e /checkout\npip==99.0\n'; exit 0
fi
if [ "$1" = "-m" ]; then echo "$*" >>"$LOG"; fi
if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then echo "suite read $LLAVA_CODEBOOK_LOCK" >>"$LOG"; exit "$SUITE"; fi
if [ "$1" = "-m" ]; then exit 0; fi
exec {python} "$@"
"""


@pytest.fixture
def drift_checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in ("refresh-lock.sh", "lockfile.py"):
        (root / "scripts" / name).write_text((REPO_ROOT / "scripts" / name).read_text())
    (root / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())
    (root / "constraints.txt").write_text("# old lock\n# by bash scripts/refresh-lock.sh\ntorch==2.13.0\ntransformers==5.23.0\n")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.replace("{python}", sys.executable))
    fake.chmod(0o755)
    return root, fake


def refresh(root: Path, fake: Path, *args: str, suite: int = 0) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "TORCH_SPEC", "DRIFT_VENV", "LLAVA_CODEBOOK_LOCK")
    }
    env.update(PYTHON=str(fake), LOG=str(root / "calls.log"), SUITE=str(suite))
    return subprocess.run(
        ["bash", str(root / "scripts" / "refresh-lock.sh"), *args], env=env, capture_output=True, text=True
    )


def test_refresh_installs_every_extra_unlocked_with_torch_held_and_writes_the_lock_when_the_suite_passes(
    drift_checkout,
):
    root, fake = drift_checkout
    run = refresh(root, fake)
    assert run.returncode == 0, run.stderr
    calls = (root / "calls.log").read_text().splitlines()
    extras = ",".join(sorted(PROJECT["project"]["optional-dependencies"]))
    install = next(call for call in calls if " -e " in call)
    assert f"-e {root}[{extras}]" in install and "torch==2.13.0" in install and "--upgrade" in install
    assert not any("--constraint" in call for call in calls)  # the newest allowed, not the lock
    assert any(call.startswith("-m pytest") for call in calls)
    # The suite checked the lock it was about to write, not the old one.
    (read,) = [call.split("suite read ")[1] for call in calls if call.startswith("suite read ")]
    assert "transformers==9.9.9" in Path(read).read_text()
    assert "transformers: 5.23.0 -> 9.9.9" in run.stdout
    lock = (root / "constraints.txt").read_text()
    assert "transformers==9.9.9" in lock and "torch==2.13.0\n" in lock and "pip==99.0" in lock
    assert "checkout" not in lock.split("\n# Environment")[-1].split("\n", 1)[1]


def test_refresh_leaves_the_lock_alone_when_the_suite_fails_or_with_check(drift_checkout):
    root, fake = drift_checkout
    before = (root / "constraints.txt").read_text()
    failed = refresh(root, fake, suite=1)
    assert failed.returncode == 1 and "the lock is unchanged" in failed.stderr
    assert refresh(root, fake, "--check").returncode == 0
    assert (root / "constraints.txt").read_text() == before
