"""Index-cache ops on the CPU backend (numpy arrays) against the numpy
reference, bit-exact, with poisoned outputs and strided inputs."""

import numpy as np
import pytest

import nsa
import nsa_reference as ref
from conftest import POISON, distinct_slots, random_bf16_bits, random_cache


@pytest.mark.parametrize("mode", ["fp32", "ue8m0"])
@pytest.mark.parametrize("n,ld", [(0, 128), (1, 128), (7, 128), (130, 128), (33, 160)])
def test_quantize_and_store_k(rng, mode, n, ld):
    cache = random_cache(rng, 5)
    expected = cache.copy()
    k_full = random_bf16_bits(rng, n, ld)
    k = k_full[:, :128]  # row stride ld, unit column stride
    slots = distinct_slots(rng, n, 5, padding_every=5)
    nsa.quantize_and_store_k(cache, k, slots, mode=mode)
    ref.quantize_and_store_k(expected, k, slots, mode)
    np.testing.assert_array_equal(cache, expected)


def test_quantize_edge_values(rng):
    # all-zero row, a row at the fp8 limit, tiny values, and negative zero
    rows = np.zeros((4, 128), np.float32)
    rows[1, :] = np.linspace(-448, 448, 128, dtype=np.float32)
    rows[2, :] = 1e-6
    rows[3, :] = -0.0
    bits = (rows.view(np.uint32) >> 16).astype(np.uint16)
    for mode in ("fp32", "ue8m0"):
        cache = random_cache(rng, 1)
        expected = cache.copy()
        slots = np.array([0, 1, 63, 2], np.int64)
        nsa.quantize_and_store_k(cache, bits, slots, mode=mode)
        ref.quantize_and_store_k(expected, bits, slots, mode)
        np.testing.assert_array_equal(cache, expected)


def test_quantize_accepts_int16_bits_and_scale_mode_enum(rng):
    cache, expected = random_cache(rng, 2), None
    expected = cache.copy()
    bits = random_bf16_bits(rng, 9)
    slots = distinct_slots(rng, 9, 2)
    nsa.quantize_and_store_k(cache, bits.view(np.int16), slots, mode=nsa.ScaleMode.UE8M0)
    ref.quantize_and_store_k(expected, bits, slots, "ue8m0")
    np.testing.assert_array_equal(cache, expected)


@pytest.mark.parametrize("scale_shape", ["flat", "column"])
@pytest.mark.parametrize("n", [0, 1, 70])
def test_store_k_and_s(rng, n, scale_shape):
    cache = random_cache(rng, 3)
    expected = cache.copy()
    k = rng.integers(0, 256, size=(n, 200), dtype=np.uint8)[:, 40:168]  # strided rows
    scale = rng.standard_normal(n).astype(np.float32)
    if scale_shape == "column":
        scale = scale.reshape(n, 1)
    slots = distinct_slots(rng, n, 3, padding_every=4)
    nsa.store_k_and_s(cache, k, scale, slots)
    ref.store_k_and_s(expected, k, scale, slots)
    np.testing.assert_array_equal(cache, expected)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 200])
def test_gather_k_and_gather_s(rng, length, index_dtype):
    cache = random_cache(rng, 6)
    pages = (length + 63) // 64
    page_ids = rng.integers(0, 6, size=pages + 1).astype(index_dtype)  # repeats allowed, one spare entry
    out_k = np.full((length + 3, 128), POISON, np.uint8)
    out_s = np.full(length + 3, np.nan, np.float32)
    assert nsa.gather_k(cache, length, page_ids, out=out_k) is out_k
    assert nsa.gather_s(cache, length, page_ids, out=out_s) is out_s
    np.testing.assert_array_equal(out_k[:length], ref.gather_k(cache, length, page_ids))
    np.testing.assert_array_equal(out_s[:length].view(np.uint32), ref.gather_s(cache, length, page_ids).view(np.uint32))
    assert (out_k[length:] == POISON).all() and np.isnan(out_s[length:]).all()  # never written past length
    # allocated outputs, and the uint8 [L, 4] scale form
    k2 = nsa.gather_k(cache, length, page_ids)
    assert k2.shape == (length, 128) and k2.dtype == np.uint8
    np.testing.assert_array_equal(k2, out_k[:length])
    s_bytes = nsa.gather_s(cache, length, page_ids, out=np.empty((length, 4), np.uint8))
    np.testing.assert_array_equal(s_bytes.view(np.float32).reshape(-1).view(np.uint32),
                                  out_s[:length].view(np.uint32))


def test_gather_accepts_flat_cache(rng):
    cache = random_cache(rng, 3)
    page_ids = np.array([2, 0], np.int64)
    np.testing.assert_array_equal(nsa.gather_k(cache.reshape(-1), 100, page_ids), ref.gather_k(cache, 100, page_ids))


@pytest.mark.parametrize("lengths_form", ["seq_lens", "cu_seq_lens"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_gather_k_and_s(rng, lengths_form, index_dtype):
    cache = random_cache(rng, 8)
    lengths = np.array([0, 1, 64, 130, 0, 65, 7], dtype=index_dtype)
    cols = 4
    table_full = rng.integers(0, 8, size=(len(lengths), cols + 3)).astype(index_dtype)
    table = table_full[:, :cols]  # row stride > cols
    total = int(lengths.sum())
    capacity = total + 5
    out_k = np.full((capacity, 128), POISON, np.uint8)
    out_s = np.full(capacity, np.nan, np.float32)
    kwargs = {"seq_lens": lengths} if lengths_form == "seq_lens" else {"cu_seq_lens": ref.cu(lengths).astype(index_dtype)}
    rk, rs = nsa.gather_k_and_s(cache, table, out_k=out_k, out_s=out_s, **kwargs)
    assert rk is out_k and rs is out_s
    ek, es = ref.gather_k_and_s(cache, table, lengths)
    np.testing.assert_array_equal(out_k[:total], ek)
    np.testing.assert_array_equal(out_s[:total].view(np.uint32), es.view(np.uint32))
    assert (out_k[total:] == POISON).all() and np.isnan(out_s[total:]).all()
    # allocation from host lengths: exactly sum(L) rows
    k2, s2 = nsa.gather_k_and_s(cache, table, **kwargs)
    assert k2.shape == (total, 128) and s2.shape == (total,)
    np.testing.assert_array_equal(k2, ek)


def test_gather_k_and_s_empty_batch(rng):
    cache = random_cache(rng, 1)
    k, s = nsa.gather_k_and_s(cache, np.zeros((0, 1), np.int32), np.zeros(0, np.int32))
    assert k.shape == (0, 128) and s.shape == (0,)


def test_round_trip_quantize_then_gather(rng):
    cache = np.zeros((4, 8448), np.uint8)
    n = 100
    bits = random_bf16_bits(rng, n)
    nsa.quantize_and_store_k(cache, bits, np.arange(n, dtype=np.int64) + 64)  # pages 1 and 2
    k = nsa.gather_k(cache, n, np.array([1, 2], np.int32))
    s = nsa.gather_s(cache, n, np.array([1, 2], np.int32))
    for t in (0, 50, 99):
        q, scale = ref.quantize_row(ref.bf16_bits_to_float(bits[t]), "fp32")
        np.testing.assert_array_equal(k[t], q)
        assert s[t] == scale


def test_cpu_threads_setting():
    old = nsa._nsa.get_cpu_threads()
    try:
        nsa.set_cpu_threads(1)
        assert nsa._nsa.get_cpu_threads() == 1
        with pytest.raises(ValueError):
            nsa.set_cpu_threads(-1)
    finally:
        nsa.set_cpu_threads(old)


# ---------------------------------------------------------------- page sizes, K dtypes, scale formula

PAGE_SIZES = [16, 32, 64, 128, 256]


def random_k(rng, n, dtype):
    """Random K rows of `dtype` ('bf16' as raw uint16 bits, 'float16', 'float32'), magnitudes over many binades."""
    x = rng.standard_normal((n, 128)).astype(np.float32) * np.exp2(rng.uniform(-8, 8, size=(n, 1))).astype(np.float32)
    if dtype == "bf16":
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x.astype(dtype)


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_every_op_at_every_page_size(rng, page_size):
    pages = 6
    page_bytes = page_size * 132
    # vLLM's view of the same bytes: [num_blocks, block_size, 132]
    cache = rng.integers(0, 256, size=(pages, page_size, 132), dtype=np.uint8)
    n = 3 * page_size + 5
    slots = rng.permutation(pages * page_size)[:n].astype(np.int64)
    slots[::7] = -1
    for mode in ("fp32", "ue8m0"):
        k = random_k(rng, n, "bf16")
        expected = cache.copy()
        nsa.quantize_and_store_k(cache, k, slots, mode, page_size=page_size)
        ref.quantize_and_store_k(expected, k, slots, mode, page=page_size)
        np.testing.assert_array_equal(cache, expected)
    k8 = rng.integers(0, 256, size=(n, 128), dtype=np.uint8)
    scale = rng.random(n, dtype=np.float32)
    expected = cache.copy()
    nsa.store_k_and_s(cache, k8, scale, slots, page_size=page_size)
    ref.store_k_and_s(expected, k8, scale, slots, page=page_size)
    np.testing.assert_array_equal(cache, expected)

    for length in (0, 1, page_size - 1, page_size, page_size + 1, 4 * page_size):
        ids = rng.integers(0, pages, size=-(-length // page_size)).astype(np.int32)
        out_k = np.full((length, 128), POISON, np.uint8)
        out_s = np.full(length, np.nan, np.float32)
        nsa.gather_k(cache, length, ids, out=out_k, page_size=page_size)
        nsa.gather_s(cache, length, ids, out=out_s, page_size=page_size)
        np.testing.assert_array_equal(out_k, ref.gather_k(cache, length, ids, page=page_size))
        np.testing.assert_array_equal(out_s.view(np.uint32), ref.gather_s(cache, length, ids, page=page_size).view(np.uint32))

    lens = np.array([0, 1, page_size + 3, 2 * page_size, 5], np.int64)
    table = rng.integers(0, pages, size=(5, 4)).astype(np.int64)
    k_exp, s_exp = ref.gather_k_and_s(cache, table, lens, page=page_size)
    for kw in ({"seq_lens": lens}, {"cu_seq_lens": ref.cu(lens)}):
        cap = int(lens.sum()) + 3
        out_k = np.full((cap, 128), POISON, np.uint8)
        out_s = np.full(cap, np.nan, np.float32)
        nsa.gather_k_and_s(cache, table, out_k=out_k, out_s=out_s, page_size=page_size, **kw)
        np.testing.assert_array_equal(out_k[:len(k_exp)], k_exp)
        np.testing.assert_array_equal(out_s[:len(s_exp)].view(np.uint32), s_exp.view(np.uint32))
        assert (out_k[len(k_exp):] == POISON).all() and np.isnan(out_s[len(s_exp):]).all()
    assert cache.nbytes == pages * page_bytes


@pytest.mark.parametrize("dtype", ["bf16", "float16", "float32"])
@pytest.mark.parametrize("mode,formula", [("fp32", "multiply"), ("fp32", "divide"), ("ue8m0", "multiply"),
                                          ("ue8m0", "divide")])
def test_quantize_dtypes_and_formulas(rng, dtype, mode, formula):
    n = 200
    k = random_k(rng, n, dtype)
    slots = distinct_slots(rng, n, 5, padding_every=9)
    cache = random_cache(rng, 5)
    expected = cache.copy()
    nsa.quantize_and_store_k(cache, k, slots, mode, scale_formula=formula)
    ref.quantize_and_store_k(expected, k, slots, mode, formula=formula)
    np.testing.assert_array_equal(cache, expected)


def test_multiply_and_divide_differ_on_ties(rng):
    # On random data about 1 byte in 2000 differs between x * (1/s) and x / s;
    # 256 K bytes must show some, and each formula matches its reference.
    n = 2000
    k = random_k(rng, n, "float32")
    slots = np.arange(n, dtype=np.int64)
    a = random_cache(rng, 32)
    b = a.copy()
    nsa.quantize_and_store_k(a, k, slots, "fp32", scale_formula="multiply")
    nsa.quantize_and_store_k(b, k, slots, "fp32", scale_formula="divide")
    assert (a != b).any()  # the formulas are really different
    expected = a.copy()
    ref.quantize_and_store_k(expected, k, slots, "fp32", formula="divide")
    np.testing.assert_array_equal(b, expected)


@pytest.mark.parametrize("bad", [True, False, 1, 0, 1.0, None, "FP32", b"fp32"])
def test_mode_accepts_only_documented_values(rng, bad):
    cache = random_cache(rng, 1)
    before = cache.copy()
    k = random_k(rng, 2, "bf16")
    with pytest.raises(nsa.InvalidArgumentError, match="'mode'"):
        nsa.quantize_and_store_k(cache, k, np.array([0, 1], np.int64), bad)
    np.testing.assert_array_equal(cache, before)


@pytest.mark.parametrize("arg,bad", [("scale_formula", True), ("scale_formula", "div"), ("page_size", 48),
                                     ("page_size", 64.0), ("page_size", True)])
def test_other_enum_like_arguments(rng, arg, bad):
    cache = random_cache(rng, 1)
    before = cache.copy()
    with pytest.raises(nsa.InvalidArgumentError, match=f"'{arg}'"):
        nsa.quantize_and_store_k(cache, random_k(rng, 2, "bf16"), np.array([0, 1], np.int64), **{arg: bad})
    np.testing.assert_array_equal(cache, before)
    with pytest.raises(nsa.InvalidArgumentError, match="'page_size'"):
        nsa.gather_k(cache, 1, np.zeros(1, np.int32), page_size=100)


def test_cache_must_hold_whole_pages_of_the_page_size(rng):
    cache = random_cache(rng, 2)  # 16896 bytes: 2 pages of 64 tokens, 8 of 16, 1 of 128, none of 256 (33792 B)
    out = nsa.gather_k(cache, 16, np.array([7], np.int32), page_size=16)
    np.testing.assert_array_equal(out, ref.gather_k(cache, 16, [7], page=16))
    with pytest.raises(nsa.InvalidArgumentError, match="'cache'.*33792"):
        nsa.gather_k(cache, 1, np.array([0], np.int32), page_size=256)


def test_outputs_overlapping_inputs_are_rejected(rng):
    cache = random_cache(rng, 4)
    before = cache.copy()
    flat = cache.reshape(-1)
    lens = np.array([10, 20], np.int64)
    table = np.array([[0], [1]], np.int32)
    # out_k inside the cache
    with pytest.raises(nsa.InvalidArgumentError, match="'out_k'.*no overlap with 'cache'"):
        nsa.gather_k(cache, 10, np.array([2], np.int32), out=flat[:1280].reshape(10, 128))
    # out_s on the memory of seq_lens
    buf = np.zeros(64, np.float32)
    lens_view = buf[:4].view(np.int64)
    lens_view[:] = lens
    out_k = np.full((30, 128), POISON, np.uint8)
    with pytest.raises(nsa.InvalidArgumentError, match="'out_s'.*no overlap with 'batch.seq_lens'"):
        nsa.gather_k_and_s(cache, table, lens_view, out_k=out_k, out_s=buf[:30])
    # out_k and out_s on one buffer
    both = np.full(30 * 128 + 30 * 4, POISON, np.uint8)
    with pytest.raises(nsa.InvalidArgumentError, match="'out_k'.*no overlap with 'out_s'"):
        nsa.gather_k_and_s(cache, table, lens, out_k=both[:3840].reshape(30, 128), out_s=both[3712:3832].view(np.float32))
    # K rows inside the cache they are stored into
    with pytest.raises(nsa.InvalidArgumentError, match="'cache'.*no overlap with 'k'"):
        nsa.store_k_and_s(cache, flat[:256].reshape(2, 128), np.ones(2, np.float32), np.array([100, 101], np.int64))
    with pytest.raises(nsa.InvalidArgumentError, match="'cache'.*no overlap with 'k'"):
        nsa.quantize_and_store_k(cache, flat[:512].view(np.uint16).reshape(2, 128), np.array([100, 101], np.int64))
    np.testing.assert_array_equal(cache, before)
    assert (out_k == POISON).all() and (both == POISON).all()
