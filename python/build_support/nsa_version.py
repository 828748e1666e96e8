"""scikit-build-core metadata provider: the package version with the build
variant as its local part, e.g. ``0.1.0+cu130`` (CUDA 13.0 backend) or
``0.1.0+cpu``, so a wheel says what it contains.

The variant follows the same rule as the root CMakeLists (NSA_CUDA=AUTO):
CUDA when nvcc is found ($CUDACXX, PATH, /usr/local/cuda/bin) unless the
NSA_CUDA environment variable is OFF. python/CMakeLists.txt checks that the
configured build agrees with the version (SKBUILD_PROJECT_VERSION_FULL).
"""

import os
import re
import shutil
import subprocess


def _nvcc():
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def variant():
    if os.environ.get("NSA_CUDA", "AUTO").upper() in ("OFF", "0", "FALSE", "NO"):
        return "cpu"
    nvcc = _nvcc()
    if nvcc is None:
        return "cpu"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"cu{m.group(1)}{m.group(2)}" if m else "cpu"


def dynamic_metadata(field, settings=None):
    if field != "version":
        raise ValueError(f"nsa_version provides only 'version', not {field!r}")
    with open("CMakeLists.txt") as f:
        base = re.search(r"project\(nsa VERSION ([0-9.]+)", f.read()).group(1)
    return f"{base}+{variant()}"
