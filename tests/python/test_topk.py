"""topk_transform on the CPU backend (numpy arrays) against a numpy
reference: exact sets, ascending order, -1 padding, untouched columns past k,
strided views, every transform and the argument errors."""

import numpy as np
import pytest

import nsa

POISON = -1431655766  # 0xAAAAAAAA as int32


def score_keys(x):
    """Order-preserving uint64 keys of float32 scores (-0 == +0, +NaN top, -NaN bottom)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits[bits == 0x80000000] = 0
    return np.where(bits & 0x80000000, 0xFFFFFFFF - bits, bits | 0x80000000)


def ref_row(scores, start, length, k):
    keys = score_keys(scores[start:start + length])
    order = np.lexsort((np.arange(length), -keys.astype(np.int64)))  # key desc, index asc
    return np.sort(order[:min(length, k)])


def check(out, rows, k, transform_row):
    for r, sel in enumerate(rows):
        want = np.full(k, -1, np.int64)
        want[:len(sel)] = [transform_row(r, x) for x in sel]
        np.testing.assert_array_equal(out[r, :k], want, err_msg=f"row {r}")


@pytest.mark.parametrize("k", [512, 1024, 2048])
def test_decode_paged64_matches_reference(rng, k):
    rows, width = 6, 3 * k + 17
    scores_full = rng.standard_normal((rows, width + 9)).astype(np.float32)
    scores = scores_full[:, :width]  # row stride width + 9
    scores[2, ::3] = 0.0  # ties
    lengths = np.array([0, 1, k, k + 1, width, width + 5], np.int32)
    cols = (width + 63) // 64
    table = rng.permutation(100000)[: 4 * cols].reshape(4, cols).astype(np.int32)
    table[1, 0] = -1  # a padding page: its slots are -1
    rtr = np.array([3, 2, 1, 0, 1, 2], np.int64)
    out_full = np.full((rows, k + 4), POISON, np.int32)
    out, raw = nsa.topk_transform(scores, lengths, k, transform="paged64", page_table=table, row_to_request=rtr,
                                  out=out_full, return_raw=True, order="ascending")
    assert out is out_full
    sel = [ref_row(scores[r], 0, min(max(int(lengths[r]), 0), width), k) for r in range(rows)]
    check(out, sel, k, lambda r, x: -1 if table[rtr[r], x >> 6] < 0 else table[rtr[r], x >> 6] * 64 + (x & 63))
    check(raw, sel, k, lambda r, x: x)
    assert (out_full[:, k:] == POISON).all()


@pytest.mark.parametrize("n", [2, 4])
def test_mtp_lengths(rng, n):
    k, width = 512, 1500
    lengths = np.array([n - 1, k + n, width], np.int32)
    rows = len(lengths) * n
    scores = rng.standard_normal((rows, width)).astype(np.float32)
    out = nsa.topk_transform(scores, lengths, k, rows_per_request=n)
    sel = [ref_row(scores[r], 0, max(0, int(lengths[r // n]) - n + 1 + r % n), k) for r in range(rows)]
    out = np.sort(np.where(out < 0, np.iinfo(np.int32).max, out), axis=1)  # order "any": compare sets
    for r, s in enumerate(sel):
        np.testing.assert_array_equal(out[r, :len(s)], s)
        assert (out[r, len(s):] == np.iinfo(np.int32).max).all()


def test_ragged_prefill_and_offsets(rng):
    k = 512
    kv = [1400, 900]
    starts = np.array([0, 0, 1400, 1400], np.int64)
    lengths = np.array([1399, 1400, 899, 900], np.int64)
    offsets = starts.copy()
    scores = rng.standard_normal((4, sum(kv))).astype(np.float32)
    out = nsa.topk_transform(scores, lengths, k, row_starts=starts, transform="ragged", offsets=offsets,
                             order="ascending")
    sel = [ref_row(scores[r], int(starts[r]), int(lengths[r]), k) for r in range(4)]
    check(out, sel, k, lambda r, x: x + offsets[r])


def test_bfloat16_bits_and_nan(rng):
    k = 512
    x = rng.standard_normal((2, 2000)).astype(np.float32)
    x[0, ::5] = np.nan
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    out = nsa.topk_transform(bits, np.array([2000, 1999], np.int32), k, order="ascending")
    check(out, [ref_row(widened[r], 0, 2000 - r, k) for r in range(2)], k, lambda r, x: x)


def test_errors():
    scores = np.zeros((2, 100), np.float32)
    lengths = np.array([100, 100], np.int32)
    with pytest.raises(nsa.InvalidArgumentError, match="'k'"):
        nsa.topk_transform(scores, lengths, 4096)
    with pytest.raises(nsa.InvalidArgumentError, match="transform"):
        nsa.topk_transform(scores, lengths, 16, transform="pages")
    with pytest.raises(nsa.InvalidArgumentError, match="page_table"):
        nsa.topk_transform(scores, lengths, 16, transform="paged64")
    with pytest.raises(nsa.InvalidArgumentError, match="'out'"):
        nsa.topk_transform(scores, lengths, 16, out=np.zeros((2, 8), np.int32))
    with pytest.raises(nsa.DTypeError):
        nsa.topk_transform(scores.astype(np.float64), lengths, 16)
    with pytest.raises(nsa.InvalidArgumentError, match="lengths"):
        nsa.topk_transform(scores, lengths[:1], 16)


def test_torch_cuda_matches_cpu():
    """torch CUDA tensors (current stream, CUDA-graph replay) give the CPU backend's bytes."""
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and nsa.cuda_built()):
        pytest.skip("needs a GPU, torch CUDA and a CUDA build of nsa")
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(8, 40000, generator=gen)
    scores[:, ::3] = 0.0
    lengths = torch.tensor([0, 5, 2048, 2049, 32768, 32769, 40000, 39999], dtype=torch.int32)
    want = nsa.topk_transform(scores, lengths, 2048, order="ascending")
    s_dev, l_dev = scores.cuda(), lengths.cuda()
    out = torch.full((8, 2048), -5, dtype=torch.int32, device="cuda")
    nsa.topk_transform(s_dev, l_dev, 2048, out=out, order="ascending")
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), want)
    graph = torch.cuda.CUDAGraph()
    out.fill_(-5)
    with torch.cuda.graph(graph):
        nsa.topk_transform(s_dev, l_dev, 2048, out=out, order="ascending")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), want)
