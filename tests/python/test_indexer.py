"""paged_mqa_logits on the CPU backend (numpy arrays) against a numpy
reference (fp8 decoded, fp64 dot products and head sum): DeepGEMM's
calc_diff, -inf exactly where a row cannot see the token, MTP rows, strided
outputs with untouched padding, masked pages and argument errors."""

import numpy as np
import pytest

import nsa

H, D = 64, 128


def e4m3_table():
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    e, m = (codes >> 3) & 15, codes & 7
    mag = np.where(e == 0, m / 512.0, (1 + m / 8.0) * np.exp2(e - 7.0))
    mag[(codes & 0x7F) == 0x7F] = np.nan
    return sign * mag


FP8 = e4m3_table()


def random_fp8(rng, shape):
    v = rng.integers(0, 256, size=shape, dtype=np.uint8)
    v[(v & 0x7F) >= 0x70] &= 0xB7  # no NaN codes, modest magnitudes
    return v


def make_cache(rng, pages, page_size):
    cache = random_fp8(rng, (pages, page_size * (D + 4)))
    scales = rng.uniform(1e-3, 1e-2, size=(pages, page_size)).astype(np.float32)
    cache[:, page_size * D:] = scales.view(np.uint8).reshape(pages, page_size * 4)
    return cache


def reference(q, w, cache, lens, table, width, page_size):
    B, N = q.shape[:2]
    out = np.full((B * N, width), -np.inf)
    kbytes = cache[:, :page_size * D].reshape(-1, page_size, D)
    scales = cache[:, page_size * D:].copy().view(np.float32)
    for b in range(B):
        for j in range(N):
            r = b * N + j
            length = min(max(0, int(lens[b]) - N + 1 + j), width)
            qf = FP8[q[b, j]]  # [64, 128]
            for t in range(length):
                col = t // page_size
                page = int(table[b, col]) if col < table.shape[1] else -1
                if page < 0 or page >= cache.shape[0]:
                    continue
                k = FP8[kbytes[page, t % page_size]]
                s = np.maximum(qf @ k, 0.0)
                out[r, t] = float(scales[page, t % page_size]) * float(w[r] @ s)
    return out


def calc_diff(x, y):
    finite = np.isfinite(y)
    x, y = x[finite].astype(np.float64), y[finite]
    denom = (x * x + y * y).sum()
    return 0.0 if denom == 0 else 1 - 2 * (x * y).sum() / denom


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_matches_reference(rng, n):
    page_size, cols, B = 64, 6, 3
    pages = B * cols + 2
    cache = make_cache(rng, pages, page_size)
    table = rng.permutation(pages)[:B * cols].reshape(B, cols).astype(np.int32)
    lens = np.array([0, 200, 383], np.int64)
    q = random_fp8(rng, (B, n, H, D))
    w = rng.standard_normal((B * n, H)).astype(np.float32) * 0.05
    width = cols * page_size
    out = nsa.paged_mqa_logits(q, w, cache, lens, table)
    assert out.shape == (B * n, width) and out.dtype == np.float32
    want = reference(q, w, cache, lens, table, width, page_size)
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(want))
    assert calc_diff(out, want) < 1e-6


def test_strided_out_page_size_and_masked_pages(rng):
    page_size, cols, B, n = 16, 10, 2, 2
    pages = B * cols
    cache = make_cache(rng, pages, page_size).reshape(-1)  # flat buffer
    table = np.arange(pages, dtype=np.int64).reshape(B, cols)
    table[0, 2] = -1  # padding page inside the length
    table[1, 3] = pages + 5  # outside the cache
    lens = np.array([150, 120], np.int32)
    q = random_fp8(rng, (B, n, H, D))
    w = rng.standard_normal((B * n, H)).astype(np.float32) * 0.05
    full = np.full((B * n, 170), 7.0, np.float32)
    out = full[:, :160]
    got = nsa.paged_mqa_logits(q, w, cache, lens, table, out=out, page_size=page_size)
    assert got is out
    assert np.all(full[:, 160:] == 7.0)  # columns past the width untouched
    want = reference(q, w, cache.reshape(pages, -1), lens, table, 160, page_size)
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(want))
    assert np.isneginf(out[0, 2 * 16]) and np.isneginf(out[2, 3 * 16])
    assert calc_diff(out, want) < 1e-6


def test_bit_identical_runs(rng):
    cache = make_cache(rng, 8, 64)
    table = np.arange(8, dtype=np.int32).reshape(2, 4)
    lens = np.array([256, 100], np.int32)
    q = random_fp8(rng, (2, 1, H, D))
    w = rng.standard_normal((2, H)).astype(np.float32)
    a = nsa.paged_mqa_logits(q, w, cache, lens, table)
    b = nsa.paged_mqa_logits(q, w, cache, lens, table)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_errors(rng):
    cache = make_cache(rng, 4, 64)
    table = np.zeros((1, 4), np.int32)
    lens = np.array([10], np.int32)
    q = random_fp8(rng, (1, 1, H, D))
    w = np.zeros((1, H), np.float32)
    with pytest.raises(nsa.DTypeError, match="weights"):
        nsa.paged_mqa_logits(q, w.astype(np.float64), cache, lens, table)
    with pytest.raises(nsa.InvalidArgumentError, match="q"):
        nsa.paged_mqa_logits(q[:, :, :32], w, cache, lens, table)
    with pytest.raises(nsa.InvalidArgumentError, match="next_n"):
        nsa.paged_mqa_logits(random_fp8(rng, (1, 5, H, D)), np.zeros((5, H), np.float32), cache, lens, table)
    with pytest.raises(nsa.InvalidArgumentError, match="page_size"):
        nsa.paged_mqa_logits(q, w, cache, lens, table, page_size=6)


@pytest.mark.parametrize("n,k", [(1, 256), (2, 100), (4, 64)])
def test_indexer_topk_equals_logits_then_topk(rng, n, k):
    page_size, cols, B = 64, 8, 3
    pages = B * cols
    cache = make_cache(rng, pages, page_size)
    table = rng.permutation(pages).reshape(B, cols).astype(np.int32)
    lens = np.array([3, 300, 500], np.int32)
    q = random_fp8(rng, (B, n, H, D))
    w = rng.standard_normal((B * n, H)).astype(np.float32) * 0.05
    got, raw = nsa.indexer_topk(q, w, cache, lens, table, k, return_raw=True, order="ascending")
    logits = nsa.paged_mqa_logits(q, w, cache, lens, table)
    want, want_raw = nsa.topk_transform(logits, lens, k, rows_per_request=n, transform="paged64", page_table=table,
                                        return_raw=True, order="ascending")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(raw, want_raw)
    with pytest.raises(nsa.InvalidArgumentError, match="k"):
        nsa.indexer_topk(q, w, cache, lens, table, 0)
