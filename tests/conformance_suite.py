"""transformers' common test suite (ModelTesterMixin, ConfigTester, ProcessorTesterMixin) for the installed version.

The suite's files are not installed with transformers; its source distribution on the package registry carries them.
`load_common_suite()` downloads that sdist once (`pip download --no-binary :all:`), keeps only its `tests/` folder in
a cache outside the repository and imports the three common modules unchanged. The sdist leaves out four small
helpers those modules import from sibling folders of transformers' git tree; `_STAND_INS` provides minimal
stand-ins for them (what each does is said next to it). Nothing here is copied from transformers.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

CACHE_DIR = Path(os.environ.get("MMFUSION_CONFORMANCE_CACHE", Path.home() / ".cache" / "mmfusion-conformance"))
# The suite's `tests` folder is imported under this package name so it cannot clash with another `tests` package.
PACKAGE = "transformers_common_tests"
COMMON_MODULES = ("test_modeling_common", "test_configuration_common", "test_processing_common")

_STAND_INS = {
    # `tests/__init__.py` of the git tree: empty there too.
    f"{PACKAGE}/__init__.py": "",
    # ModelTesterMixin derives from ExportTesterMixin (torch.export tests); mmfusion's export is tested by its own
    # ONNX tests, so the mixin adds nothing here.
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    # Only used to check that generative models' testers inherit it; mmfusion models do not generate.
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    # Read only by ConfigTester.check_config_arguments_init for configs without sub-configs (ours has two).
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
    # The git tree's `utils/fetch_hub_objects_for_ci.py` maps test-asset URLs to a CI cache; without it the URL is
    # used as is (the processor tests used here do not open those assets).
    "utils/fetch_hub_objects_for_ci.py": "def url_to_local_path(url, return_url_if_not_found=True):\n    return url\n",
}


class SuiteUnavailable(RuntimeError):
    """The common suite could not be obtained; the message says why (the tests skip with it)."""


def suite_dir(version: str = transformers.__version__) -> Path:
    return CACHE_DIR / f"transformers-{version}"


def ensure_suite(version: str = transformers.__version__) -> Path:
    """The cached suite folder for `version`, downloading and extracting the sdist the first time."""
    target = suite_dir(version)
    if (target / PACKAGE / "test_modeling_common.py").exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"transformers=={version}",
            "--dest",
            scratch,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SuiteUnavailable(f"`pip download transformers=={version}` did not finish: {error}") from error
        archives = list(Path(scratch).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            last_line = ((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1]
            raise SuiteUnavailable(
                f"could not download the transformers {version} source distribution: {last_line[:300]}"
            )
        staging = Path(scratch) / "suite"
        with tarfile.open(archives[0]) as archive:
            prefix = f"{archives[0].name.removesuffix('.tar.gz')}/tests/"
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and m.isfile()]
            if not any(m.name == prefix + "test_modeling_common.py" for m in members):
                raise SuiteUnavailable(f"the transformers {version} source distribution has no tests/ folder")
            for member in members:
                member.name = PACKAGE + "/" + member.name[len(prefix) :]
                archive.extract(member, staging, filter="data")
        for relative, text in _STAND_INS.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text(text)
        # Renaming a complete folder into place: concurrent or interrupted runs never see half a suite.
        try:
            staging.rename(target)
        except OSError:
            if not (target / PACKAGE / "test_modeling_common.py").exists():
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    return target


def load_common_suite():
    """Import the three common modules; returns them as (modeling, configuration, processing)."""
    try:
        importlib.import_module("parameterized")
    except ImportError as error:
        raise SuiteUnavailable("transformers' common tests need `parameterized`: pip install parameterized") from error
    root = ensure_suite()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return tuple(importlib.import_module(f"{PACKAGE}.{module}") for module in COMMON_MODULES)
    except ImportError as error:  # e.g. a test dependency of a newer transformers that is not installed here
        raise SuiteUnavailable(f"transformers' common tests do not import here: {error}") from error
