"""build_metadata / copy_metadata on the CPU backend (numpy arrays) against
the numpy re-statement of metadata.md, into several destination sets with
different strides, every byte outside the defined region checked untouched."""

import numpy as np
import pytest

import nsa
import nsa_reference as ref


SENTINEL = -7777


def make_destination(rng, max_rows, bs, width, pad, real_cols, with_optional=True, fm_size=16):
    """One destination set, sentinel-filled, page tables with row stride width + pad."""
    def vec(n):
        return np.full(n, SENTINEL, np.int32)

    d = {
        "cache_seqlens": vec(bs + 2),
        "cu_seqlens_k": vec(bs + 3),
        "page_table_1": np.full((max_rows, width + pad), SENTINEL, np.int32)[:, :width],
        "nsa_cache_seqlens": vec(max_rows),
        "nsa_cu_seqlens_k": vec(max_rows + 1),
    }
    if with_optional:
        d["seqlens_expanded"] = vec(max_rows)
        d["real_page_table"] = np.full((max_rows, real_cols + pad + 1), SENTINEL, np.int32)[:, :real_cols]
        d["flashmla_num_splits"] = vec(max_rows + 1)
        d["flashmla_metadata"] = np.full((fm_size // 8, 8), SENTINEL, np.int32)
    return d


def page_aligned_req_to_token(rng, pool_rows, width, page_size=64):
    """A page-aligned allocator: each row is a list of whole pages."""
    pages = -(-width // page_size)
    out = np.empty((pool_rows, pages * page_size + 5), np.int32)  # row stride > width
    for r in range(pool_rows):
        ids = rng.permutation(pool_rows * pages * 4)[:pages]
        out[r, :pages * page_size] = (ids[:, None] * page_size + np.arange(page_size)).reshape(-1)
    return out[:, :width]


def check_vector(actual, expected, start=0):
    n = len(expected)
    np.testing.assert_array_equal(actual[start:start + n - start] if start else actual[:n], expected[start:])
    assert (actual[n:] == SENTINEL).all()


def check_destination(d, fields, mode, fm_splits=None, fm_meta=None):
    bs = len(fields["cache_seqlens"])
    rows = fields["rows"]
    check_vector(d["cache_seqlens"], fields["cache_seqlens"])
    np.testing.assert_array_equal(d["cu_seqlens_k"][:bs + 1], fields["cu_seqlens_k"])
    assert (d["cu_seqlens_k"][bs + 1:] == SENTINEL).all()
    np.testing.assert_array_equal(d["nsa_cache_seqlens"][:rows], fields["nsa_cache_seqlens"])
    assert (d["nsa_cache_seqlens"][rows:] == SENTINEL).all()
    np.testing.assert_array_equal(d["nsa_cu_seqlens_k"][:rows + 1], fields["nsa_cu_seqlens_k"])
    assert (d["nsa_cu_seqlens_k"][rows + 1:] == SENTINEL).all()
    if "seqlens_expanded" in d:
        np.testing.assert_array_equal(d["seqlens_expanded"][:rows], fields["seqlens_expanded"])
        assert (d["seqlens_expanded"][rows:] == SENTINEL).all()
    pt = d["page_table_1"]
    base = pt.base if pt.base is not None else pt
    for r, row in enumerate(fields["page_table_rows"]):
        np.testing.assert_array_equal(pt[r, :len(row)], row)
        assert (pt[r, len(row):] == SENTINEL).all()
    assert (pt[rows:] == SENTINEL).all()
    assert (base[:, pt.shape[1]:] == SENTINEL).all()  # the padding past each row's width
    if "real_page_table" in d:
        real = d["real_page_table"]
        for r, row in enumerate(fields["real_page_table_rows"]):
            np.testing.assert_array_equal(real[r, :len(row)], row)
            assert (real[r, len(row):] == SENTINEL).all()
        assert (real[rows:] == SENTINEL).all()
    if fm_splits is not None and "flashmla_num_splits" in d:
        np.testing.assert_array_equal(d["flashmla_num_splits"][:rows + 1], fm_splits[:rows + 1])
        assert (d["flashmla_num_splits"][rows + 1:] == SENTINEL).all()
    if fm_meta is not None and "flashmla_metadata" in d:
        np.testing.assert_array_equal(d["flashmla_metadata"].reshape(-1), fm_meta.reshape(-1)[:d["flashmla_metadata"].size])


CASES = [
    # mode, bs, draft_tokens, index dtype
    (nsa.ForwardMode.DECODE, 1, 1, np.int64),
    (nsa.ForwardMode.DECODE, 33, 1, np.int32),
    (nsa.ForwardMode.TARGET_VERIFY, 5, 4, np.int64),
    (nsa.ForwardMode.TARGET_VERIFY, 3, 1, np.int32),
    (nsa.ForwardMode.DRAFT_EXTEND, 6, 4, np.int64),
]


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("mode,bs,n,index_dtype", CASES)
def test_build_metadata(rng, mode, bs, n, index_dtype, count):
    topk = 100
    width = 300 + n
    pool_rows = bs + 4
    req_to_token = page_aligned_req_to_token(rng, pool_rows, width)
    lengths = [1, topk - 1, topk, topk + 1, 300]
    seq_lens = np.array([lengths[i % len(lengths)] for i in range(bs)], dtype=index_dtype)
    rpi = rng.permutation(pool_rows)[:bs].astype(index_dtype)
    extend = None
    if mode == nsa.ForwardMode.DRAFT_EXTEND:
        extend = np.array([[0, 1, n][i % 3] for i in range(bs)], dtype=index_dtype)
    max_rows = bs if mode == nsa.ForwardMode.DECODE else bs * n
    fm_splits = rng.integers(0, 1000, max_rows + 1).astype(np.int32)
    fm_meta = rng.integers(0, 1000, 16).astype(np.int32)
    dests = [make_destination(rng, max_rows + i, bs, width + 2 * i, pad=i, real_cols=-(-width // 64) + i,
                              with_optional=(i != 1 or mode == nsa.ForwardMode.DECODE))
             for i in range(count)]
    if mode != nsa.ForwardMode.DECODE:
        for d in dests:  # seqlens_expanded is mandatory outside DECODE
            d.setdefault("seqlens_expanded", np.full(max_rows + 3, SENTINEL, np.int32))
    targets = nsa.MetadataTargets(dests)
    assert targets.count == count
    nsa.build_metadata(targets, seq_lens, rpi, req_to_token, mode=mode, draft_tokens=n, extend_lens=extend,
                       topk=topk, flashmla_num_splits=fm_splits, flashmla_metadata=fm_meta)
    fields = ref.build_fields(int(mode), seq_lens, rpi, req_to_token, draft_tokens=n, extend_lens=extend, topk=topk)
    for d in dests:
        check_destination(d, fields, mode, fm_splits, fm_meta)


def test_build_metadata_worked_example():
    """metadata.md §4.7: seq_lens [2100, 70], N = 4, TOPK 2048."""
    r2t = np.arange(2 * 2200, dtype=np.int32).reshape(2, 2200)
    seq = np.array([2100, 70], np.int64)
    rpi = np.array([0, 1], np.int64)

    def run(mode, **kw):
        rows = 2 if mode == 0 else 8
        d = make_destination(None, rows, 2, 2200, 0, 40, with_optional=True)
        nsa.build_metadata(nsa.MetadataTargets([d]), seq, rpi, r2t, mode=mode, **kw)
        return d

    d = run(nsa.ForwardMode.TARGET_VERIFY, draft_tokens=4)
    assert d["cache_seqlens"][:2].tolist() == [2104, 74]
    assert d["seqlens_expanded"][:8].tolist() == [2101, 2102, 2103, 2104, 71, 72, 73, 74]
    assert d["nsa_cu_seqlens_k"][:9].tolist() == [0, 2048, 4096, 6144, 8192, 8263, 8335, 8408, 8482]
    d = run("draft_extend", draft_tokens=4, extend_lens=np.array([2, 3], np.int32))
    assert d["seqlens_expanded"][:5].tolist() == [2099, 2100, 68, 69, 70]
    assert d["nsa_cu_seqlens_k"][:6].tolist() == [0, 2048, 4096, 4164, 4233, 4303]
    d = run(0)
    assert d["nsa_cache_seqlens"][:2].tolist() == [2048, 70]


def copy_reference(dst, src, mode, bs, max_len, max_seqlen_k, E):
    """metadata.md §6.2, literally: plain copies into numpy destinations."""
    decode = mode == 0
    rows, cols = (bs, max_len) if decode else (E, max_seqlen_k)
    dst["cache_seqlens"][:bs] = src["cache_seqlens"][:bs]
    dst["cu_seqlens_k"][1:bs + 1] = src["cu_seqlens_k"][1:bs + 1]
    dst["page_table_1"][:rows, :cols] = src["page_table_1"][:rows, :cols]
    if not decode and "seqlens_expanded" in src and "seqlens_expanded" in dst:
        dst["seqlens_expanded"][:E] = src["seqlens_expanded"][:E]
    dst["nsa_cache_seqlens"][:rows] = src["nsa_cache_seqlens"][:rows]
    dst["nsa_cu_seqlens_k"][1:rows + 1] = src["nsa_cu_seqlens_k"][1:rows + 1]
    if "real_page_table" in src and "real_page_table" in dst:
        c = src["real_page_table"].shape[1]
        dst["real_page_table"][:rows, :c] = src["real_page_table"][:rows]
    if "flashmla_num_splits" in src and "flashmla_num_splits" in dst:
        dst["flashmla_num_splits"][:rows + 1] = src["flashmla_num_splits"][:rows + 1]
    if "flashmla_metadata" in src and "flashmla_metadata" in dst:
        flat = dst["flashmla_metadata"].reshape(-1)
        flat[:src["flashmla_metadata"].size] = src["flashmla_metadata"].reshape(-1)


def _base(a):
    return a.base if a.base is not None else a


@pytest.mark.parametrize("count", [1, 2, 7])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_copy_metadata(rng, mode, count):
    bs, n = 6, 4
    E = bs if mode == 0 else (bs * n if mode == 1 else 13)
    max_len, max_seqlen_k, real_cols = 40, 50, 3
    rows = bs if mode == 0 else E

    def ints(*shape):
        return rng.integers(0, 10_000, size=shape).astype(np.int32)

    src = {
        "cache_seqlens": ints(bs), "cu_seqlens_k": ints(bs + 1),
        "page_table_1": ints(rows, 64)[:, :max(max_len, max_seqlen_k)],  # strided source
        "seqlens_expanded": ints(E), "nsa_cache_seqlens": ints(rows), "nsa_cu_seqlens_k": ints(rows + 1),
        "real_page_table": ints(rows, real_cols), "flashmla_num_splits": ints(rows + 1), "flashmla_metadata": ints(16),
    }
    dests = [make_destination(rng, bs * n + i, bs, 60 + i, pad=i, real_cols=real_cols + i) for i in range(count)]
    expected = [{k: _base(v).copy() for k, v in d.items()} for d in dests]
    expected_views = []
    for d, e in zip(dests, expected):
        views = {}
        for k, v in d.items():
            base = e[k]
            views[k] = base[:, :v.shape[1]] if (v.ndim == 2 and v.base is not None) else base
        expected_views.append(views)
    targets = nsa.MetadataTargets(dests)
    nsa.copy_metadata(targets, src, mode=mode, batch_size=bs, max_len=max_len, max_seqlen_k=max_seqlen_k,
                      seqlens_expanded_size=E)
    for d, e, v in zip(dests, expected, expected_views):
        copy_reference(v, src, mode, bs, max_len, max_seqlen_k, E)
        for k in d:
            np.testing.assert_array_equal(_base(d[k]), e[k], err_msg=k)


def test_targets_keep_arrays_alive_and_report_capacity(rng):
    d = make_destination(rng, 9, 4, 10, 0, 1, with_optional=False)
    targets = nsa.MetadataTargets(d)
    assert targets.max_rows(0) == 9 and len(targets) == 1
    assert targets.destinations[0]["page_table_1"] is d["page_table_1"]
    d2 = dict(d, max_rows=5)
    assert nsa.MetadataTargets([d2]).max_rows(0) == 5


# ---------------------------------------------------------------- DeepGEMM paged-MQA schedule

def test_paged_mqa_schedule_reference_hand_worked():
    # u = [2, 0, 4, 1], T = 7, 4 SMs: G4 starts 0, 1, 3, 5; G1 starts 0, 2, 4, 6 (metadata.md §10).
    np.testing.assert_array_equal(ref.paged_mqa_schedule([300, 0, 1000, 1], 1, 4),
                                  [[0, 0], [0, 1], [2, 1], [2, 3], [4, 0]])
    np.testing.assert_array_equal(ref.paged_mqa_schedule([300, 0, 1000, 1], 1, 4, g1=True),
                                  [[0, 0], [2, 0], [2, 2], [3, 0], [4, 0]])
    np.testing.assert_array_equal(ref.paged_mqa_schedule([0, 0], 1, 3), [[2, 0]] * 4)
    np.testing.assert_array_equal(ref.paged_mqa_schedule([0, 0], 1, 3, clamp_min_len=True),
                                  [[0, 0], [0, 0], [1, 0], [2, 0]])


@pytest.mark.parametrize("layout", ["g4", "g1"])
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("bs,n", [(1, 1), (31, 1), (32, 2), (33, 1), (256, 2), (1000, 1), (4096, 2)])
def test_paged_mqa_schedule_matches_numpy(rng, bs, n, layout, clamp):
    lens = rng.integers(0, 70000, (bs, n)).astype(np.int32)
    lens[::3, -1] = 0
    for sms in (1, 78, 132):
        out = nsa.paged_mqa_schedule(lens, sms, layout=layout, clamp_min_len=clamp)
        np.testing.assert_array_equal(out, ref.paged_mqa_schedule(lens[:, -1], n, sms, layout == "g1", clamp))
    zeros = np.zeros((bs, n), np.int32)  # every SM at the sentinel unless clamped
    np.testing.assert_array_equal(nsa.paged_mqa_schedule(zeros, 132, layout=layout, clamp_min_len=clamp),
                                  ref.paged_mqa_schedule(zeros[:, -1], n, 132, layout == "g1", clamp))


def test_paged_mqa_schedule_strided_rows_and_errors():
    lens = np.full((8, 5), 999, np.int32)[:, :2]  # row stride 5, column 1 read
    lens[:, 1] = np.arange(8) * 300
    np.testing.assert_array_equal(nsa.paged_mqa_schedule(lens, 10), ref.paged_mqa_schedule(lens[:, 1], 2, 10))
    with pytest.raises(nsa.InvalidArgumentError, match="num_sms"):
        nsa.paged_mqa_schedule(lens, 0)
    with pytest.raises(nsa.DTypeError, match="context_lens"):
        nsa.paged_mqa_schedule(lens.astype(np.int64), 4)
    with pytest.raises(nsa.InvalidArgumentError, match="out"):
        nsa.paged_mqa_schedule(lens, 4, out=np.zeros((5, 3), np.int32))
    with pytest.raises(nsa.InvalidArgumentError, match="layout"):
        nsa.paged_mqa_schedule(lens, 4, layout="g2")


@pytest.mark.parametrize("mode,n", [(0, 1), (1, 2), (1, 4), (2, 2)])
def test_build_metadata_writes_the_schedule_field(rng, mode, n):
    bs, width = 40, 3000
    req_to_token = page_aligned_req_to_token(rng, bs + 1, width)
    seq_lens = rng.integers(0, width - n, bs).astype(np.int32)
    seq_lens[::4] = 0
    extend = np.minimum(seq_lens, n).astype(np.int32) if mode == 2 else None
    rows = bs if mode == 0 else bs * n
    dests = []
    for sms in (132, 7):
        d = make_destination(rng, rows, bs, width, pad=1, real_cols=-(-width // 64))
        d["paged_mqa_schedule"] = np.full((sms + 1, 2), SENTINEL, np.int32)
        dests.append(d)
    dests.append(make_destination(rng, rows, bs, width, pad=0, real_cols=-(-width // 64)))  # without the field
    targets = nsa.MetadataTargets(dests)
    for layout, clamp in (("g4", False), (nsa.PagedMqaLayout.G1, True)):
        nsa.build_metadata(targets, seq_lens, np.arange(bs, dtype=np.int32), req_to_token, mode=mode,
                           draft_tokens=n, extend_lens=extend, paged_mqa_layout=layout, paged_mqa_clamp_min_len=clamp)
        cache = seq_lens.astype(np.int64) + (n if mode == 1 else 0)
        np.testing.assert_array_equal(dests[0]["cache_seqlens"][:bs], cache)
        for d in dests[:2]:
            sms = d["paged_mqa_schedule"].shape[0] - 1
            g1 = layout != "g4"
            np.testing.assert_array_equal(d["paged_mqa_schedule"],
                                          ref.paged_mqa_schedule(cache, 1 if mode == 0 else n, sms, g1, clamp))


def test_schedule_field_shape_is_checked_and_never_a_copy_source(rng):
    d = make_destination(rng, 4, 4, 64, pad=0, real_cols=1)
    d["paged_mqa_schedule"] = np.zeros((5, 3), np.int32)
    with pytest.raises(nsa.InvalidArgumentError, match="paged_mqa_schedule"):
        nsa.MetadataTargets([d])
    d["paged_mqa_schedule"] = np.zeros((5, 2), np.int32)
    targets = nsa.MetadataTargets([d])
    src = {k: v.copy() for k, v in d.items() if k != "paged_mqa_schedule"}
    with pytest.raises(nsa.InvalidArgumentError, match="paged_mqa_schedule"):
        nsa.copy_metadata(targets, dict(src, paged_mqa_schedule=d["paged_mqa_schedule"]), mode=0, batch_size=4,
                          max_len=8)
