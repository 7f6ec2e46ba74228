"""Importing megatron-core's dataset code: quietly, lazily, and with its C++ helpers present.

- Importing any megatron.core module imports the whole package (~3 s) and warns four times that
  Transformer Engine and Apex are missing; the data code needs neither, so those warnings are
  silenced and the import happens on first use only.
- megatron.core.datasets logs every index build at INFO; it is set to WARNING unless the user
  already chose a level for it.
- GPTDataset and BlendedDataset need the pybind11 extension megatron.core.datasets.helpers_cpp.
  The megatron-core wheels on PyPI ship it prebuilt (helpers_cpp.cpython-*.so is listed in the
  wheel's RECORD), so a plain `pip install megatron-core` needs no compilation, and the
  Makefile that megatron's compile_helpers() runs is not even in the wheel. Only a source
  install can lack it; then it is compiled once from the helpers.cpp that megatron-core ships,
  with the system C++ compiler and the pybind11 headers (from pybind11, or the copy bundled in
  torch/include), into a per-user cache, and registered under its usual module name.
"""

import hashlib
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path
from types import ModuleType

from aria_train.data.errors import DataError

HELPERS_MODULE = "megatron.core.datasets.helpers_cpp"


def import_megatron(module_name: str) -> ModuleType:
    """Import a megatron.core.datasets module with the helpers available and the noise off."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*Transformer Engine and Apex", category=UserWarning
        )
        try:
            ensure_helpers_cpp()  # first: importing megatron.core.datasets.helpers needs it
            module = importlib.import_module(module_name)
        except ImportError as err:
            message = f"cannot import {module_name}: {err} (pip install megatron-core)"
            raise DataError(message) from None
    datasets_logger = logging.getLogger("megatron.core.datasets")
    if datasets_logger.level == logging.NOTSET:
        datasets_logger.setLevel(logging.WARNING)
    return module


def ensure_helpers_cpp() -> None:
    if sys.modules.get(HELPERS_MODULE) is not None:
        return
    try:
        importlib.import_module(HELPERS_MODULE)
        return
    except ImportError:
        pass
    source = _helpers_source()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    out_dir = _user_cache_dir() / "megatron_helpers" / f"{digest}-{python}"
    path = out_dir / f"helpers_cpp{sysconfig.get_config_var('EXT_SUFFIX')}"
    if not path.is_file():
        build_helpers_cpp(out_dir)
    _register_extension(path)


def build_helpers_cpp(out_dir: Path, optimize: str = "-O3") -> Path:
    """Compile megatron-core's helpers.cpp into out_dir; returns the extension's path.

    Written to a temporary name and renamed, so ranks compiling at the same time never load a
    half-written library.
    """
    source = _helpers_source()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"helpers_cpp{sysconfig.get_config_var('EXT_SUFFIX')}"
    tmp = out_dir / f".helpers_cpp.tmp-{os.getpid()}.so"
    command = [
        os.environ.get("CXX", "c++"),
        optimize,
        "-shared",
        "-std=c++17",
        "-fPIC",
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{_pybind11_include()}",
        str(source),
        "-o",
        str(tmp),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as err:
        message = f"building {HELPERS_MODULE}: cannot run {command[0]} ({err.strerror})"
        raise DataError(message) from None
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line] or ["failed"]
        raise DataError(f"building {HELPERS_MODULE} from {source}: {errors[0].strip()}")
    os.replace(tmp, path)
    return path


def _register_extension(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(HELPERS_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[HELPERS_MODULE] = module
    import megatron.core.datasets as datasets_package

    datasets_package.helpers_cpp = module


def _helpers_source() -> Path:
    spec = importlib.util.find_spec("megatron.core.datasets")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("megatron-core is not installed (pip install megatron-core)")
    source = Path(list(spec.submodule_search_locations)[0]) / "helpers.cpp"
    if not source.is_file():
        raise DataError(f"{HELPERS_MODULE} is missing and so is {source}; reinstall megatron-core")
    return source


def _pybind11_include() -> str:
    try:
        import pybind11

        return pybind11.get_include()
    except ImportError:
        pass
    import torch  # bundles the pybind11 headers it was built with

    include = Path(torch.__file__).parent / "include"
    if not (include / "pybind11" / "pybind11.h").is_file():
        raise DataError(f"building {HELPERS_MODULE}: no pybind11 headers (pip install pybind11)")
    return str(include)


def _user_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "aria_train"
