"""Shared fixtures. The package under test is whichever `nsa` is importable:
the installed one (pip install .) or a build tree on PYTHONPATH
(PYTHONPATH=build-py/python, see scripts/build-python.sh)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # nsa_reference

nsa = pytest.importorskip("nsa")

POISON = 0xA5


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_cache(rng, pages):
    return rng.integers(0, 256, size=(pages, 8448), dtype=np.uint8)


def random_bf16_bits(rng, n, cols=128):
    """Finite bf16 values whose magnitudes span many binades (as raw uint16 bits)."""
    x = rng.standard_normal((n, cols)).astype(np.float32) * np.exp2(rng.uniform(-12, 12, size=(n, 1))).astype(np.float32)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def distinct_slots(rng, n, pages, padding_every=0):
    slots = rng.permutation(pages * 64)[:n].astype(np.int64)
    if padding_every:
        slots[::padding_every] = -1
    return slots


def _array_frameworks():
    out = ["numpy"]
    try:
        import torch  # noqa: F401
        out.append("torch")
    except ImportError:
        pass
    return out


# Array libraries the compat tests run on: numpy always, torch (CPU tensors) when installed.
FRAMEWORKS = _array_frameworks()


def to_np(x):
    return x if isinstance(x, np.ndarray) else x.numpy()


def to_fw(fw, x):
    """numpy array x in framework fw, sharing its memory (uint16 = bf16 bits)."""
    if x is None or fw == "numpy" or not isinstance(x, np.ndarray):
        return x
    import torch
    if x.dtype == np.uint16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)
