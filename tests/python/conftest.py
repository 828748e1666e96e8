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


def cuda_torch():
    """torch, when it sees a CUDA device and nsa was built with CUDA; else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() and nsa.cuda_built() else None


needs_cuda = pytest.mark.skipif(cuda_torch() is None, reason="needs torch with a CUDA device and a CUDA build of nsa")


def captured(torch, call):
    """call() captured in a CUDA graph, after a warm-up call on the capture
    stream itself (so one-time uploads keyed by stream happen before capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    side.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    return graph
