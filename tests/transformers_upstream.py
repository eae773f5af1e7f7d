"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), from the installed version's sdist.

The sdist of the installed transformers is fetched with pip (`pip download --no-deps --no-binary :all:
transformers==<installed>`) once per user and version, and its top-level `tests/*.py` are unpacked into
`~/.cache/llava-codebook-tests/transformers-<version>/tests/` (`LLAVA_CODEBOOK_TEST_CACHE` moves the cache root).
Nothing else of the sdist is used: the installed transformers is the code under test, the sdist only brings the tests.

The sdist ships only the top-level test modules; `test_modeling_common.py` also imports
`tests/generation/test_utils.py` (`GenerationTesterMixin`) and `tests/exporters/test_export.py`
(`ExportTesterMixin`), and `test_configuration_common.py` imports `tests/utils/test_configuration_utils.py`; none of
those is in the sdist. They are replaced by the small stand-ins below, put into `sys.modules` before the upstream
modules are imported (under a private package name, so nothing here can shadow the project's own `tests`).
`parameterized` (a test-only dependency of transformers) gets a stand-in too when it is not installed.
"""

import importlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import warnings
from pathlib import Path

import transformers

PACKAGE = "_transformers_upstream_tests"
# The upstream modules this project runs. The sdist has more (tokenizer, processor, pipeline mixins ...): unused.
REQUIRED = ("test_modeling_common.py", "test_configuration_common.py")


class UpstreamTestsUnavailable(RuntimeError):
    """The sdist could not be fetched (registry unreachable) or does not hold the expected test modules."""


def cache_root() -> Path:
    root = os.environ.get("LLAVA_CODEBOOK_TEST_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "llava-codebook-tests"


def _download_sdist(version: str, into: Path) -> Path:
    # Bounded: an unreachable registry must end in a skip within a minute or two, not pip's default retries.
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
        "--quiet", "--retries", "1", "--timeout", "30", f"transformers=={version}", "-d", str(into),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UpstreamTestsUnavailable(f"`{' '.join(command)}` did not run: {error}") from error
    archives = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if done.returncode != 0 or not archives:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise UpstreamTestsUnavailable(
            f"`pip download` of the transformers {version} sdist failed (package registry unreachable?):\n  "
            + "\n  ".join(tail)
        )
    return archives[0]


def _unpack_top_level_tests(archive: Path, version: str, target: Path) -> None:
    """Write the sdist's `tests/*.py` (top level only, regular files only) into `target`."""
    pattern = re.compile(rf"^transformers-{re.escape(version)}/tests/([A-Za-z0-9_]+\.py)$")
    with tarfile.open(archive, "r:gz") as sdist:
        for member in sdist.getmembers():
            match = pattern.match(member.name)
            if match and member.isfile():
                (target / match.group(1)).write_bytes(sdist.extractfile(member).read())
    missing = [name for name in REQUIRED if not (target / name).is_file()]
    if missing:
        raise UpstreamTestsUnavailable(f"The transformers {version} sdist has no tests/{missing}.")
    # `test_configuration_common` runs `direct_transformers_import(<its own folder>)`, which executes the folder's
    # `__init__.py` (empty upstream, absent from the sdist) and then returns the installed `transformers`.
    (target / "__init__.py").write_text("")


def upstream_tests_dir(version: str | None = None) -> Path:
    """The folder holding the sdist's top-level test modules, downloading and unpacking them on first use."""
    version = version or transformers.__version__
    home = cache_root() / f"transformers-{version}"
    tests = home / "tests"
    if all((tests / name).is_file() for name in REQUIRED) and (tests / "__init__.py").is_file():
        return tests
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home) as scratch:
        scratch = Path(scratch)
        archive = _download_sdist(version, scratch)
        staged = scratch / "tests"
        staged.mkdir()
        _unpack_top_level_tests(archive, version, staged)
        # Another process may have finished first: its copy is as good as ours.
        if not tests.exists():
            try:
                staged.rename(tests)
            except OSError:
                if not tests.exists():
                    raise
    return tests


# ---------------------------------------------------------------------------------------------------- stand-ins
class GenerationTesterMixin:
    """Stand-in for `tests/generation/test_utils.py::GenerationTesterMixin`, which the sdist does not ship.

    It has no tests: `generate` is not exercised through upstream's generation suite here (the project's own
    `tests/test_modeling.py` holds the project's classes' `generate` against the stock model). Test classes still
    inherit it so that `test_generation_tester_mixin_inheritance` checks what it checks upstream.
    """


class ExportTesterMixin:
    """Stand-in for `tests/exporters/test_export.py::ExportTesterMixin` (not in the sdist): no export tests run."""


# `tests/utils/test_configuration_utils.py::config_common_kwargs` is only read by `ConfigTester` for configs without
# sub-configs; LLaVA-NeXT's config is composite, so the stand-in can stay empty.
CONFIG_COMMON_KWARGS: dict = {}


def _parameterized_stand_in() -> types.ModuleType:
    """A minimal `parameterized.parameterized.expand`, naming tests as upstream: `<name>_<index>[_<first str arg>]`."""

    class parameterized:  # noqa: N801 - the upstream spelling
        @staticmethod
        def to_safe_name(text) -> str:
            return str(re.sub("[^a-zA-Z0-9_]+", "_", str(text)))

        @classmethod
        def expand(cls, params, **_ignored):
            def decorate(function):
                namespace = sys._getframe(1).f_locals  # the class body being executed

                for index, args in enumerate(params):
                    args = args if isinstance(args, (tuple, list)) else (args,)
                    suffix = f"_{index}"
                    if args and isinstance(args[0], str):
                        suffix += "_" + cls.to_safe_name(args[0])

                    def bound(self, _args=tuple(args), _function=function):
                        return _function(self, *_args)

                    bound.__name__ = function.__name__ + suffix
                    bound.__qualname__ = bound.__name__
                    bound.__doc__ = function.__doc__
                    namespace[bound.__name__] = bound
                function.__test__ = False
                return function

            return decorate

    module = types.ModuleType("parameterized")
    module.parameterized = parameterized
    module.__llava_codebook_stand_in__ = True
    return module


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def import_upstream(version: str | None = None) -> types.SimpleNamespace:
    """Import upstream `test_modeling_common` and `test_configuration_common` with the stand-ins in place.

    Returns a namespace with the two modules. Raises `UpstreamTestsUnavailable` when the sdist cannot be had.
    """
    if PACKAGE in sys.modules and hasattr(sys.modules[PACKAGE], "test_modeling_common"):
        package = sys.modules[PACKAGE]
        return types.SimpleNamespace(
            modeling=package.test_modeling_common, configuration=package.test_configuration_common
        )
    folder = upstream_tests_dir(version)
    try:
        import parameterized  # noqa: F401
    except ImportError:
        sys.modules["parameterized"] = _parameterized_stand_in()
    package = _module(PACKAGE, __path__=[str(folder)], __file__=str(folder / "__init__.py"))
    package.__package__ = PACKAGE
    stand_ins = {
        PACKAGE: package,
        f"{PACKAGE}.generation": _module(f"{PACKAGE}.generation", __path__=[]),
        f"{PACKAGE}.generation.test_utils": _module(
            f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=GenerationTesterMixin
        ),
        f"{PACKAGE}.exporters": _module(f"{PACKAGE}.exporters", __path__=[]),
        f"{PACKAGE}.exporters.test_export": _module(
            f"{PACKAGE}.exporters.test_export", ExportTesterMixin=ExportTesterMixin
        ),
        f"{PACKAGE}.utils": _module(f"{PACKAGE}.utils", __path__=[]),
        f"{PACKAGE}.utils.test_configuration_utils": _module(
            f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs=CONFIG_COMMON_KWARGS
        ),
    }
    sys.modules.update(stand_ins)
    try:
        with warnings.catch_warnings():
            # Upstream registers its own marks (flash_attn_test, torch_compile_test, ...) in its conftest, which is
            # not used here: applying them at import would warn once per decorated test.
            warnings.filterwarnings("ignore", message=r"Unknown pytest\.mark\.")
            modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
            configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    except Exception as error:
        for name in [*stand_ins, f"{PACKAGE}.test_modeling_common", f"{PACKAGE}.test_configuration_common"]:
            sys.modules.pop(name, None)
        if isinstance(error, ModuleNotFoundError) and (error.name or "").startswith(PACKAGE + "."):
            missing = error.name.removeprefix(PACKAGE + ".")
            raise ImportError(
                f"transformers {transformers.__version__}'s upstream tests import `tests/{missing.replace('.', '/')}"
                ".py`, which its sdist does not ship: add a stand-in for it in tests/transformers_upstream.py."
            ) from error
        raise
    package.test_modeling_common, package.test_configuration_common = modeling, configuration
    return types.SimpleNamespace(modeling=modeling, configuration=configuration)


def clear_cache(version: str | None = None) -> None:
    """Remove the cached tests of `version` (the installed one by default)."""
    shutil.rmtree(cache_root() / f"transformers-{version or transformers.__version__}", ignore_errors=True)


__all__ = [
    "ExportTesterMixin",
    "GenerationTesterMixin",
    "UpstreamTestsUnavailable",
    "clear_cache",
    "import_upstream",
    "upstream_tests_dir",
]
