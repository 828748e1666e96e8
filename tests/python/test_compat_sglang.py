"""nsa.compat.sglang against straightforward numpy re-statements of the
upstream semantics (SGLang index_buf_accessor and fused_metadata_copy)."""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest

import nsa
from nsa.compat import sglang
from conftest import random_cache

POOL = SimpleNamespace(page_size=64, index_head_dim=128, quant_block_size=128)


# ---------------------------------------------------------------- upstream semantics, restated

def upstream_get_k(buf, seq_len, page_indices):
    rows = [buf[page_indices[t // 64], (t % 64) * 128:(t % 64 + 1) * 128] for t in range(seq_len)]
    return np.array(rows, np.uint8).reshape(seq_len, 128)


def upstream_get_s(buf, seq_len, page_indices):
    rows = [buf[page_indices[t // 64], 8192 + (t % 64) * 4:8192 + (t % 64 + 1) * 4] for t in range(seq_len)]
    return np.array(rows, np.uint8).reshape(seq_len, 4)


def upstream_set_k_and_s(buf, loc, index_k, index_k_scale):
    scale_bytes = np.ascontiguousarray(index_k_scale, np.float32).reshape(-1).view(np.uint8).reshape(-1, 4)
    for i, slot in enumerate(loc):
        page, off = slot // 64, slot % 64
        buf[page, off * 128:(off + 1) * 128] = index_k[i]
        buf[page, 8192 + off * 4:8192 + (off + 1) * 4] = scale_bytes[i]


def upstream_copy(src, dst, mode, bs, max_len, max_seqlen_k, E, has_real, has_fm):
    dst["cache_seqlens"][:bs] = src["cache_seqlens"][:bs]
    dst["cu_seqlens_k"][1:bs + 1] = src["cu_seqlens_k"][1:bs + 1]
    if mode == 0:
        dst["page_table_1"][:bs, :max_len] = src["page_indices"][:bs, :max_len]
        n = bs
    else:
        dst["page_table_1"][:E, :max_seqlen_k] = src["page_indices"][:E, :max_seqlen_k]
        if dst.get("seqlens_expanded") is not None:
            dst["seqlens_expanded"][:E] = src["seqlens_expanded"][:E]
        n = E
    dst["nsa_cache_seqlens"][:n] = src["nsa_cache_seqlens"][:n]
    dst["nsa_cu_seqlens_k"][1:n + 1] = src["nsa_cu_seqlens_k"][1:n + 1]
    if has_real:
        c = src["real_page_table"].shape[1]
        dst["real_page_table"][:n, :c] = src["real_page_table"][:n]
    if has_fm:
        dst["flashmla_num_splits"][:n + 1] = src["flashmla_num_splits"][:n + 1]
        dst["flashmla_metadata"][...] = src["flashmla_metadata"]


# ---------------------------------------------------------------- signatures

def test_signatures_match_upstream():
    names = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert names(sglang.get_k) == ["pool", "buf", "seq_len", "page_indices"]
    assert names(sglang.get_s) == ["pool", "buf", "seq_len", "page_indices"]
    assert names(sglang.get_k_and_s) == ["pool", "buf", "page_indices", "seq_len_tensor", "seq_len_sum",
                                         "max_seq_len"]
    assert names(sglang.set_k_and_s) == ["pool", "buf", "loc", "index_k", "index_k_scale"]
    single = names(sglang.fused_metadata_copy_cuda)
    assert len(single) == 23 and single[:3] == ["cache_seqlens_src", "cu_seqlens_k_src", "page_indices_src"]
    assert single[18:] == ["forward_mode", "bs", "max_len", "max_seqlen_k", "seqlens_expanded_size"]
    multi = names(sglang.fused_metadata_copy_multi_cuda)
    assert len(multi) == 35 and multi[8] == "cache_seqlens_dst0" and multi[-3:] == ["bs", "max_len",
                                                                                      "seqlens_expanded_size"]
    for f in (sglang.get_k, sglang.get_s, sglang.get_k_and_s, sglang.set_k_and_s, sglang.fused_metadata_copy_cuda,
              sglang.fused_metadata_copy_multi_cuda):
        assert "Mirrors" in f.__doc__


# ---------------------------------------------------------------- index buffer accessors

@pytest.mark.parametrize("seq_len", [1, 64, 100])
def test_get_k_get_s(rng, seq_len):
    buf = random_cache(rng, 5)
    pages = rng.integers(0, 5, size=(seq_len + 63) // 64).astype(np.int32)
    k = sglang.get_k(POOL, buf, seq_len, pages)
    s = sglang.get_s(POOL, buf, seq_len, pages)
    assert k.dtype == np.uint8 and k.shape == (seq_len, 128)
    assert s.dtype == np.uint8 and s.shape == (seq_len, 4)
    np.testing.assert_array_equal(k, upstream_get_k(buf, seq_len, pages))
    np.testing.assert_array_equal(s, upstream_get_s(buf, seq_len, pages))


def test_get_k_and_s(rng):
    buf = random_cache(rng, 6)
    seq_lens = np.array([5, 70, 0, 128], np.int64)
    page_indices = rng.integers(0, 6, size=(4, 3)).astype(np.int32)
    k, s = sglang.get_k_and_s(POOL, buf, page_indices, seq_lens, int(seq_lens.sum()), int(seq_lens.max()))
    ek = np.concatenate([upstream_get_k(buf, int(L), page_indices[b]) for b, L in enumerate(seq_lens)])
    es = np.concatenate([upstream_get_s(buf, int(L), page_indices[b]) for b, L in enumerate(seq_lens)])
    assert k.shape == (203, 128) and s.shape == (203, 4) and s.dtype == np.uint8
    np.testing.assert_array_equal(k, ek)
    np.testing.assert_array_equal(s, es)


@pytest.mark.parametrize("scale_2d", [False, True])
def test_set_k_and_s(rng, scale_2d):
    buf = random_cache(rng, 3)
    expected = buf.copy()
    loc = rng.permutation(192)[:20].astype(np.int64)
    k = rng.integers(0, 256, size=(20, 128), dtype=np.uint8)
    scale = rng.standard_normal((20, 1) if scale_2d else 20).astype(np.float32)
    assert sglang.set_k_and_s(POOL, buf, loc, k, scale) is None
    upstream_set_k_and_s(expected, loc, k, scale)
    np.testing.assert_array_equal(buf, expected)


def test_pool_layout_is_checked(rng):
    with pytest.raises(ValueError, match="page_size 64"):
        sglang.get_k(SimpleNamespace(page_size=1, index_head_dim=128), random_cache(rng, 1), 1, np.zeros(1, np.int32))


# ---------------------------------------------------------------- fused metadata copies



def _fixture(rng, bs, E, has_real, has_fm, rows):
    """SGLang's test fixture shapes (metadata.md §11): max_len 128, max_seqlen_k 256."""
    ints = lambda lo, hi, *shape: rng.integers(lo, hi, size=shape).astype(np.int32)  # noqa: E731
    src = {
        "cache_seqlens": ints(1, 128, bs), "cu_seqlens_k": ints(0, 10_000, bs + 1),
        "page_indices": ints(0, 1000, rows, 256), "nsa_cache_seqlens": ints(1, 256, rows),
        "seqlens_expanded": ints(1, 256, E), "nsa_cu_seqlens_k": ints(0, 10_000, rows + 1),
        "real_page_table": ints(0, 1000, rows, 64) if has_real else None,
        "flashmla_num_splits": ints(0, 100, rows + 1) if has_fm else None,
        "flashmla_metadata": ints(0, 100, 128) if has_fm else None,
    }

    def dst():
        return {
            "cache_seqlens": np.zeros(bs, np.int32), "cu_seqlens_k": np.zeros(bs + 1, np.int32),
            "page_table_1": np.zeros((rows, 128 + 16 + 256), np.int32), "nsa_cache_seqlens": np.zeros(rows, np.int32),
            "seqlens_expanded": np.zeros(rows, np.int32), "nsa_cu_seqlens_k": np.zeros(rows + 1, np.int32),
            "real_page_table": np.zeros((rows, 72), np.int32) if has_real else None,
            "flashmla_num_splits": np.zeros(rows + 1, np.int32) if has_fm else None,
            "flashmla_metadata": np.zeros(128, np.int32) if has_fm else None,
        }

    return src, dst


SRC_ORDER = ["cache_seqlens", "cu_seqlens_k", "page_indices", "nsa_cache_seqlens", "seqlens_expanded",
             "nsa_cu_seqlens_k", "real_page_table", "flashmla_num_splits", "flashmla_metadata"]
DST_ORDER = ["cache_seqlens", "cu_seqlens_k", "page_table_1", "nsa_cache_seqlens", "seqlens_expanded",
             "nsa_cu_seqlens_k", "real_page_table", "flashmla_num_splits", "flashmla_metadata"]


@pytest.mark.parametrize("has_fm", [False, True])
@pytest.mark.parametrize("has_real", [False, True])
@pytest.mark.parametrize("mode,bs", [(0, 1), (0, 8), (0, 32), (1, 4), (2, 4)])
def test_fused_metadata_copy_cuda(rng, mode, bs, has_real, has_fm):
    E = bs if mode == 0 else (bs * 4 if mode == 1 else 3 * bs - 1)
    rows = bs if mode == 0 else E
    src, make_dst = _fixture(rng, bs, E, has_real, has_fm, rows)
    dst, expected = make_dst(), make_dst()
    args = [src[n] for n in SRC_ORDER] + [dst[n] for n in DST_ORDER] + [mode, bs, 128, 256, E]
    assert sglang.fused_metadata_copy_cuda(*args) is None
    upstream_copy(src, expected, mode, bs, 128, 256, E, has_real, has_fm)
    for name in DST_ORDER:
        if expected[name] is not None:
            np.testing.assert_array_equal(dst[name], expected[name], err_msg=name)


@pytest.mark.parametrize("has_fm", [False, True])
@pytest.mark.parametrize("has_real", [False, True])
@pytest.mark.parametrize("bs", [1, 16])
def test_fused_metadata_copy_multi_cuda(rng, bs, has_real, has_fm):
    src, make_dst = _fixture(rng, bs, bs, has_real, has_fm, bs)
    dsts = [make_dst() for _ in range(3)]
    expected = [make_dst() for _ in range(3)]
    multi_src = ["cache_seqlens", "cu_seqlens_k", "page_indices", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
                 "real_page_table", "flashmla_num_splits", "flashmla_metadata"]
    multi_dst = ["cache_seqlens", "cu_seqlens_k", "page_table_1", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
                 "real_page_table", "flashmla_num_splits", "flashmla_metadata"]
    args = [src[n] for n in multi_src]
    for d in dsts:
        args += [d[n] for n in multi_dst]
    args += [bs, 128, bs]
    sglang.fused_metadata_copy_multi_cuda(*args)
    for d, e in zip(dsts, expected):
        upstream_copy(src, e, 0, bs, 128, 0, bs, has_real, has_fm)
        for name in multi_dst + ["seqlens_expanded"]:
            if e[name] is not None:
                np.testing.assert_array_equal(d[name], e[name], err_msg=name)


def test_fused_copy_dtype_errors_match_upstream(rng):
    src, make_dst = _fixture(rng, 2, 2, False, False, 2)
    dst = make_dst()
    args = [src[n] for n in SRC_ORDER] + [dst[n] for n in DST_ORDER] + [0, 2, 128, 256, 2]
    bad = list(args)
    bad[0] = src["cache_seqlens"].astype(np.int64)
    with pytest.raises(RuntimeError, match="must have dtype int32"):
        sglang.fused_metadata_copy_cuda(*bad)
    bad = list(args)
    bad[9] = dst["cache_seqlens"].astype(np.int64)
    with pytest.raises(RuntimeError, match="must have dtype int32"):
        sglang.fused_metadata_copy_cuda(*bad)
    multi = [src[n] for n in ["cache_seqlens", "cu_seqlens_k", "page_indices", "nsa_cache_seqlens",
                              "nsa_cu_seqlens_k"]] + [None] * 3
    for _ in range(3):
        d = make_dst()
        multi += [d[n] for n in ["cache_seqlens", "cu_seqlens_k", "page_table_1", "nsa_cache_seqlens",
                                 "nsa_cu_seqlens_k"]] + [None] * 3
    multi[3] = multi[3].astype(np.int64)
    with pytest.raises(RuntimeError, match="must have dtype int32"):
        sglang.fused_metadata_copy_multi_cuda(*multi, 2, 128, 2)
    assert (dst["cache_seqlens"] == 0).all()


def test_fused_copy_reuses_uploaded_targets(rng):
    src, make_dst = _fixture(rng, 4, 4, True, True, 4)
    dst = make_dst()
    args = [src[n] for n in SRC_ORDER] + [dst[n] for n in DST_ORDER] + [0, 4, 128, 256, 4]
    sglang._targets_cache.clear()
    sglang.fused_metadata_copy_cuda(*args)
    sglang.fused_metadata_copy_cuda(*args)
    assert len(sglang._targets_cache) == 1
    src["page_indices"][:] = 7  # new values through the same destinations
    sglang.fused_metadata_copy_cuda(*args)
    assert (dst["page_table_1"][:4, :128] == 7).all()


def test_non_contiguous_sources_accepted(rng):
    src, make_dst = _fixture(rng, 3, 3, False, False, 3)
    dst, expected = make_dst(), make_dst()
    strided = np.zeros(6, np.int32)
    strided[::2] = src["cache_seqlens"]
    src_args = dict(src, cache_seqlens=strided[::2])
    args = [src_args[n] for n in SRC_ORDER] + [dst[n] for n in DST_ORDER] + [0, 3, 128, 256, 3]
    sglang.fused_metadata_copy_cuda(*args)
    upstream_copy(src, expected, 0, 3, 128, 256, 3, False, False)
    np.testing.assert_array_equal(dst["cache_seqlens"], expected["cache_seqlens"])
