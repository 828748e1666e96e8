"""nsa.compat.sglang replayed with the argument values SGLang's callers pass
(NSA backend replay precompute, multi-step draft backends, index buffer
accessors), against plain numpy re-statements of the upstream kernels'
addressing. Every destination is sentinel-filled first and compared whole.
Runs on numpy arrays, and on torch CPU tensors when torch is installed."""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest

import nsa
from nsa.compat import sglang
from conftest import FRAMEWORKS, captured, cuda_torch, needs_cuda, random_cache, to_fw, to_np

POOL = SimpleNamespace(page_size=64, index_head_dim=128, quant_block_size=128)
SENTINEL = -7
N_DRAFT = 4            # speculative_num_draft_tokens of the default DeepSeek-V3.2 MTP config
P = 64                 # real page size
NUM_SM_PARTS = 66      # FlashMLA tile rows on a 132-SM GPU


# ---------------------------------------------------------------- upstream semantics, restated

def flat(x):
    """Upstream kernels read from the first element in memory order."""
    return np.ascontiguousarray(x).reshape(-1)


def upstream_get_k(buf, seq_len, page_indices):
    pages = flat(page_indices)
    rows = [buf[pages[t // 64], (t % 64) * 128:(t % 64 + 1) * 128] for t in range(seq_len)]
    return np.array(rows, np.uint8).reshape(seq_len, 128)


def upstream_get_s(buf, seq_len, page_indices):
    pages = flat(page_indices)
    rows = [buf[pages[t // 64], 8192 + (t % 64) * 4:8192 + (t % 64 + 1) * 4] for t in range(seq_len)]
    return np.array(rows, np.uint8).reshape(seq_len, 4)


def upstream_get_k_and_s(buf, page_indices, seq_lens):
    pitch = page_indices.shape[1]
    table = flat(page_indices)
    ks, ss = [], []
    for b, length in enumerate(flat(seq_lens)):
        row = table[b * pitch:(b + 1) * pitch]
        ks.append(upstream_get_k(buf, int(length), row))
        ss.append(upstream_get_s(buf, int(length), row))
    return np.concatenate(ks), np.concatenate(ss)


def upstream_set_k_and_s(buf, loc, index_k, index_k_scale):
    scale_bytes = np.ascontiguousarray(index_k_scale, np.float32).reshape(-1).view(np.uint8).reshape(-1, 4)
    for i, slot in enumerate(np.asarray(loc, np.int64)):
        page, off = slot // 64, slot % 64
        buf[page, off * 128:(off + 1) * 128] = index_k[i]
        buf[page, 8192 + off * 4:8192 + (off + 1) * 4] = scale_bytes[i]


def upstream_copy(src, dst, mode, bs, max_len, max_seqlen_k, E, has_real, has_fm):
    """fused_metadata_copy_cuda (and, with mode 0, each destination of the
    multi kernel): dst[r * ld + c] = src[r * cols + c]."""
    dst["cache_seqlens"][:bs] = flat(src["cache_seqlens"])[:bs]
    dst["cu_seqlens_k"][1:bs + 1] = flat(src["cu_seqlens_k"])[1:bs + 1]
    rows, cols = (bs, max_len) if mode == 0 else (src["page_indices"].shape[0], max_seqlen_k)
    dst["page_table_1"][:rows, :cols] = flat(src["page_indices"])[:rows * cols].reshape(rows, cols)
    n = bs if mode == 0 else E
    if mode != 0:
        dst["seqlens_expanded"][:E] = flat(src["seqlens_expanded"])[:E]
    dst["nsa_cache_seqlens"][:n] = flat(src["nsa_cache_seqlens"])[:n]
    dst["nsa_cu_seqlens_k"][1:n + 1] = flat(src["nsa_cu_seqlens_k"])[1:n + 1]
    if has_real:
        c = src["real_page_table"].shape[1]
        real_rows = bs if mode == 0 else src["page_indices"].shape[0]
        dst["real_page_table"][:real_rows, :c] = flat(src["real_page_table"])[:real_rows * c].reshape(real_rows, c)
    if has_fm:
        dst["flashmla_num_splits"][:n + 1] = flat(src["flashmla_num_splits"])[:n + 1]
        m = src["flashmla_metadata"].size
        dst["flashmla_metadata"].reshape(-1)[:m] = flat(src["flashmla_metadata"])


# ---------------------------------------------------------------- SGLang's replay state, rebuilt

class Backend:
    """The captured CUDA-graph buffers of one NSA backend (graph width W),
    sentinel-filled, and the per-size views SGLang passes as destinations."""

    def __init__(self, max_bs, W, has_real, has_fm):
        rows = max_bs * N_DRAFT
        self.page_table = np.full((rows, W), SENTINEL, np.int32)
        self.num_splits = np.full(rows + 1, SENTINEL, np.int32) if has_fm else None
        self.tiles = np.full((NUM_SM_PARTS, 8), SENTINEL, np.int32) if has_fm else None
        self.W, self.has_real, self.has_fm = W, has_real, has_fm
        self.owned = {}

    def metadata(self, bs, rows):
        """decode_cuda_graph_metadata[bs]: fresh per-size tensors, views of the shared ones."""
        key = (bs, rows)
        if key not in self.owned:
            full = lambda n: np.full(n, SENTINEL, np.int32)  # noqa: E731
            cache_seqlens = full(bs)
            self.owned[key] = {
                "cache_seqlens": cache_seqlens, "cu_seqlens_k": full(bs + 1),
                "page_table_1": self.page_table[:rows, :],
                "nsa_cache_seqlens": full(rows),
                # DECODE aliases it to cache_seqlens_int32; the verify branch captures its own
                "seqlens_expanded": cache_seqlens if rows == bs else full(rows),
                "nsa_cu_seqlens_k": full(rows + 1),
                "real_page_table": full((rows, -(-self.W // P))) if self.has_real else None,
                "flashmla_num_splits": self.num_splits[:rows + 1] if self.has_fm else None,
                "flashmla_metadata": self.tiles if self.has_fm else None,
            }
        return self.owned[key]

    def snapshot(self):
        arrays = [self.page_table] + [a for a in (self.num_splits, self.tiles) if a is not None]
        for d in self.owned.values():
            arrays += [v for k, v in d.items() if v is not None and k not in ("page_table_1", "flashmla_num_splits",
                                                                             "flashmla_metadata")]
        return [a.copy() for a in arrays]


def cu(x):
    return np.concatenate([[0], np.cumsum(x)]).astype(np.int32)


def expand(qo, kv):
    return np.array([k - q + 1 + j for q, k in zip(qo, kv) for j in range(q)], np.int32)


def precompute(rng, mode, bs, W, has_real, has_fm, extend=None):
    """PrecomputedMetadata of SGLang's replay precompute (and the DRAFT_EXTEND
    replay): fresh contiguous int32 tensors, and the scalar arguments."""
    seq_lens = rng.integers(1, W - N_DRAFT, size=bs)
    seq_lens[rng.integers(0, bs)] = 1                      # a padded graph row
    req_to_token = rng.integers(-1, 1 << 20, size=(bs + 3, W)).astype(np.int32)  # -1: stale/unset slots
    rpi = rng.permutation(bs + 3)[:bs]
    if mode == 0:
        cache_seqlens = seq_lens.astype(np.int32)
        max_len = W                                         # page_table_1.shape[1] of the captured metadata
        page_indices = np.ascontiguousarray(req_to_token[rpi, :max_len])
        expanded = cache_seqlens                            # same tensor
        max_seqlen_k, E = max_len, bs
    else:
        if mode == 1:
            cache_seqlens = (seq_lens + N_DRAFT).astype(np.int32)
            qo = np.full(bs, N_DRAFT)
            max_seqlen_k = int(seq_lens.max()) + N_DRAFT
        else:
            cache_seqlens = seq_lens.astype(np.int32)
            qo = extend
            max_seqlen_k = int(seq_lens.max())
        page_indices = np.ascontiguousarray(np.repeat(req_to_token[rpi, :max_seqlen_k], qo, axis=0))
        expanded = expand(qo, cache_seqlens)
        max_len, E = -1, int(qo.sum())                      # "not used in this mode"
    nsa_cache = np.minimum(expanded, 2048).astype(np.int32)
    src = {
        "cache_seqlens": cache_seqlens, "cu_seqlens_k": cu(cache_seqlens), "page_indices": page_indices,
        "nsa_cache_seqlens": nsa_cache, "seqlens_expanded": expanded, "nsa_cu_seqlens_k": cu(nsa_cache),
        # _transform_table_1_to_real: every P-th column, floor-divided
        "real_page_table": np.ascontiguousarray(page_indices[:, ::P] // P) if has_real else None,
        "flashmla_num_splits": rng.integers(0, 100, size=E + 1).astype(np.int32) if has_fm else None,
        "flashmla_metadata": rng.integers(0, 100, size=(NUM_SM_PARTS, 8)).astype(np.int32) if has_fm else None,
    }
    return src, dict(bs=bs, max_len=max_len, max_seqlen_k=max_seqlen_k, E=E)


SRC_ORDER = ["cache_seqlens", "cu_seqlens_k", "page_indices", "nsa_cache_seqlens", "seqlens_expanded",
             "nsa_cu_seqlens_k", "real_page_table", "flashmla_num_splits", "flashmla_metadata"]
DST_ORDER = ["cache_seqlens", "cu_seqlens_k", "page_table_1", "nsa_cache_seqlens", "seqlens_expanded",
             "nsa_cu_seqlens_k", "real_page_table", "flashmla_num_splits", "flashmla_metadata"]
MULTI_SRC = ["cache_seqlens", "cu_seqlens_k", "page_indices", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
             "real_page_table", "flashmla_num_splits", "flashmla_metadata"]
MULTI_DST = ["cache_seqlens", "cu_seqlens_k", "page_table_1", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
             "real_page_table", "flashmla_num_splits", "flashmla_metadata"]


def single_args(fw, src, dst, mode, s):
    """The 23 positional arguments of the replay's fused_metadata_copy_cuda call."""
    return ([to_fw(fw, src[n]) for n in SRC_ORDER] + [to_fw(fw, dst[n]) for n in DST_ORDER]
            + [mode, s["bs"], s["max_len"], s["max_seqlen_k"], s["E"]])




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


# ---------------------------------------------------------------- replay: single destination, every mode

@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("has_fm", [False, True])
@pytest.mark.parametrize("has_real", [False, True])
@pytest.mark.parametrize("mode,bs", [(0, 1), (0, 5), (0, 32), (1, 1), (1, 3), (1, 16), (2, 1), (2, 4), (2, 9)])
def test_replay_fused_metadata_copy(rng, fw, mode, bs, has_real, has_fm):
    W = 200  # graph width: max_context_len + N (not a multiple of 64 on purpose)
    backend = Backend(max_bs=32, W=W, has_real=has_real, has_fm=has_fm)
    expected_backend = Backend(max_bs=32, W=W, has_real=has_real, has_fm=has_fm)
    extend = rng.integers(0, N_DRAFT + 1, size=bs) if mode == 2 else None   # accept lengths, 0 included
    src, s = precompute(rng, mode, bs, W, has_real, has_fm, extend)
    rows = bs if mode == 0 else bs * N_DRAFT                                 # captured capacity
    dst, expected = backend.metadata(bs, rows), expected_backend.metadata(bs, rows)
    for _ in range(2):  # the second replay reuses the uploaded destination table
        assert sglang.fused_metadata_copy_cuda(*single_args(fw, src, dst, mode, s)) is None
    upstream_copy(src, expected, mode, s["bs"], s["max_len"], s["max_seqlen_k"], s["E"], has_real, has_fm)
    for got, want in zip(backend.snapshot(), expected_backend.snapshot()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("mode", [0, 1])
def test_source_wider_than_copied_columns_is_read_with_upstream_pitch(rng, fw, mode):
    """Upstream reads page_indices_src[r * cols + c] (cols = copied columns),
    whatever the source's width; so does the compat layer."""
    bs, rows = 3, (3 if mode == 0 else 3 * N_DRAFT)
    src, s = precompute(rng, mode, bs, 192, False, False)
    src["page_indices"] = rng.integers(0, 1000, size=(rows, 256)).astype(np.int32)
    backend, expected_backend = Backend(4, 300, False, False), Backend(4, 300, False, False)
    dst, expected = backend.metadata(bs, rows), expected_backend.metadata(bs, rows)
    s = dict(s, max_len=100 if mode == 0 else -1, max_seqlen_k=0 if mode == 0 else 100)
    sglang.fused_metadata_copy_cuda(*single_args(fw, src, dst, mode, s))
    upstream_copy(src, expected, mode, bs, s["max_len"], s["max_seqlen_k"], s["E"], False, False)
    for got, want in zip(backend.snapshot(), expected_backend.snapshot()):
        np.testing.assert_array_equal(got, want)
    # row 1 starts at element 100 of the source, not at its row 1
    np.testing.assert_array_equal(dst["page_table_1"][1, :100], src["page_indices"].reshape(-1)[100:200])


def strided(fw, x):
    """A non-contiguous view holding x: every other element of a 1-D array,
    or the first columns of a wider 2-D one."""
    if x.ndim == 1:
        wide = np.zeros(2 * x.size, x.dtype)
        wide[::2] = x
        return to_fw(fw, wide)[::2]
    wide = np.zeros((x.shape[0], x.shape[1] + 5), x.dtype)
    wide[:, :-5] = x
    return to_fw(fw, wide)[:, :-5]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_non_contiguous_sources_accepted(rng, fw):
    """Upstream makes the mandatory sources contiguous first."""
    src, s = precompute(rng, 1, 3, 192, True, False)
    backend, expected_backend = Backend(4, 192, True, False), Backend(4, 192, True, False)
    dst, expected = backend.metadata(3, 12), expected_backend.metadata(3, 12)
    args = single_args(fw, src, dst, 1, s)
    for i in range(6):  # cache_seqlens ... nsa_cu_seqlens_k
        args[i] = strided(fw, src[SRC_ORDER[i]])
    sglang.fused_metadata_copy_cuda(*args)
    upstream_copy(src, expected, 1, 3, -1, s["max_seqlen_k"], s["E"], True, False)
    for got, want in zip(backend.snapshot(), expected_backend.snapshot()):
        np.testing.assert_array_equal(got, want)


def test_strided_real_page_table_is_read_as_upstream_reads_it(rng):
    """The optional real page table is not made contiguous upstream: its rows
    are read at r * shape[1] from the first element (torch views only)."""
    torch = pytest.importorskip("torch")
    src, s = precompute(rng, 0, 3, 192, True, False)
    backend, expected_backend = Backend(4, 192, True, False), Backend(4, 192, True, False)
    dst, expected = backend.metadata(3, 3), expected_backend.metadata(3, 3)
    args = single_args("torch", src, dst, 0, s)
    view = strided("torch", src["real_page_table"])
    args[6] = view
    sglang.fused_metadata_copy_cuda(*args)
    raw = view.as_strided((3, view.shape[1]), (view.shape[1], 1)).numpy()
    upstream_copy(dict(src, real_page_table=raw), expected, 0, 3, s["max_len"], 0, 3, True, False)
    for got, want in zip(backend.snapshot(), expected_backend.snapshot()):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- replay: multi-step draft backends

@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("has_fm", [False, True])
@pytest.mark.parametrize("has_real", [False, True])
@pytest.mark.parametrize("bs", [1, 7, 32])
def test_replay_fused_metadata_copy_multi(rng, fw, bs, has_real, has_fm):
    W = 200
    backends = [Backend(32, W, has_real, has_fm) for _ in range(3)]
    expected_backends = [Backend(32, W, has_real, has_fm) for _ in range(3)]
    src, s = precompute(rng, 0, bs, W, has_real, has_fm)
    args = [to_fw(fw, src[n]) for n in MULTI_SRC]
    for b in backends:
        d = b.metadata(bs, bs)
        args += [to_fw(fw, d[n]) for n in MULTI_DST]
    assert sglang.fused_metadata_copy_multi_cuda(*args, bs, s["max_len"], s["E"]) is None
    for b, e in zip(backends, expected_backends):
        upstream_copy(src, e.metadata(bs, bs), 0, bs, s["max_len"], 0, bs, has_real, has_fm)
        for got, want in zip(b.snapshot(), e.snapshot()):
            np.testing.assert_array_equal(got, want)


def test_multi_real_table_needs_destination_0(rng):
    """Upstream copies the real page table only when the source and
    destination 0 have one."""
    src, s = precompute(rng, 0, 4, 128, True, False)
    backends = [Backend(4, 128, True, False) for _ in range(3)]
    args = [src[n] for n in MULTI_SRC]
    for i, b in enumerate(backends):
        d = dict(b.metadata(4, 4), real_page_table=None) if i == 0 else b.metadata(4, 4)
        args += [d[n] for n in MULTI_DST]
    sglang.fused_metadata_copy_multi_cuda(*args, 4, s["max_len"], 4)
    for b in backends[1:]:
        assert (b.metadata(4, 4)["real_page_table"] == SENTINEL).all()


# ---------------------------------------------------------------- errors: the classes SGLang catches

def test_fused_copy_dtype_errors_match_upstream(rng):
    src, s = precompute(rng, 0, 2, 128, False, False)
    backend = Backend(2, 128, False, False)
    dst = backend.metadata(2, 2)
    before = backend.snapshot()
    for index in (0, 9, 11):
        args = single_args("numpy", src, dst, 0, s)
        args[index] = args[index].astype(np.int64)
        with pytest.raises(RuntimeError, match="must have dtype int32") as info:
            sglang.fused_metadata_copy_cuda(*args)
        assert isinstance(info.value, nsa.DTypeError)
    multi = [src[n] for n in MULTI_SRC]
    for b in [Backend(2, 128, False, False) for _ in range(3)]:
        multi += [b.metadata(2, 2)[n] for n in MULTI_DST]
    multi[3] = multi[3].astype(np.int64)
    with pytest.raises(RuntimeError, match="must have dtype int32"):
        sglang.fused_metadata_copy_multi_cuda(*multi, 2, 128, 2)
    for got, want in zip(backend.snapshot(), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ["mode", "rows", "real_dst", "expanded_src", "narrow_dst", "short_src"])
def test_fused_copy_errors_are_runtime_errors_and_write_nothing(rng, case):
    src, s = precompute(rng, 1, 2, 128, True, True)
    backend = Backend(2, 128, True, True)
    dst = dict(backend.metadata(2, 8))
    mode = 1
    if case == "mode":
        mode = 3
    elif case == "rows":
        s = dict(s, E=7)
    elif case == "real_dst":
        dst["real_page_table"] = None
    elif case == "expanded_src":
        src = dict(src, seqlens_expanded=None)
    elif case == "narrow_dst":
        dst["page_table_1"] = backend.page_table[:8, :s["max_seqlen_k"] - 1]
    elif case == "short_src":
        src = dict(src, page_indices=src["page_indices"][:, :-1].copy())
    before = backend.snapshot()
    with pytest.raises(RuntimeError) as info:
        sglang.fused_metadata_copy_cuda(*single_args("numpy", src, dst, mode, s))
    assert isinstance(info.value, nsa.NsaError), type(info.value).__mro__
    assert "argument" in str(info.value)
    for got, want in zip(backend.snapshot(), before):
        np.testing.assert_array_equal(got, want)


def test_fused_copy_reuses_uploaded_targets(rng):
    src, s = precompute(rng, 0, 4, 128, True, True)
    dst = Backend(4, 128, True, True).metadata(4, 4)
    args = single_args("numpy", src, dst, 0, s)
    sglang._targets_cache.clear()
    sglang.fused_metadata_copy_cuda(*args)
    sglang.fused_metadata_copy_cuda(*args)
    assert len(sglang._targets_cache) == 1
    src["page_indices"][:] = 7  # new values through the same destinations
    sglang.fused_metadata_copy_cuda(*args)
    assert (dst["page_table_1"][:4, :128] == 7).all()


# ---------------------------------------------------------------- index buffer accessors

@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("seq_len", [0, 1, 63, 64, 65, 100, 192])
def test_get_k_get_s(rng, fw, index_dtype, seq_len):
    buf = random_cache(rng, 5)
    pages = rng.integers(0, 5, size=(seq_len + 63) // 64 + 2).astype(index_dtype)  # extra entries never read
    k = to_np(sglang.get_k(POOL, to_fw(fw, buf), seq_len, to_fw(fw, pages)))
    s = to_np(sglang.get_s(POOL, to_fw(fw, buf), seq_len, to_fw(fw, pages)))
    assert k.dtype == np.uint8 and k.shape == (seq_len, 128)
    assert s.dtype == np.uint8 and s.shape == (seq_len, 4)
    np.testing.assert_array_equal(k, upstream_get_k(buf, seq_len, pages))
    np.testing.assert_array_equal(s, upstream_get_s(buf, seq_len, pages))


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("table_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("len_dtype", [np.int32, np.int64])
def test_get_k_and_s(rng, fw, len_dtype, table_dtype):
    """The indexer's prefill call: real page table [B, pages] int32, lengths
    int32/int64, seq_len_sum and max_seq_len host ints, keywords."""
    buf = random_cache(rng, 6)
    seq_lens = np.array([5, 70, 0, 128, 1, 64], len_dtype)
    page_indices = rng.integers(0, 6, size=(6, 3)).astype(table_dtype)
    k, s = sglang.get_k_and_s(POOL, to_fw(fw, buf), page_indices=to_fw(fw, page_indices),
                              seq_len_tensor=to_fw(fw, seq_lens), seq_len_sum=int(seq_lens.sum()),
                              max_seq_len=int(seq_lens.max()))
    ek, es = upstream_get_k_and_s(buf, page_indices, seq_lens)
    assert to_np(k).shape == (268, 128) and to_np(s).shape == (268, 4) and to_np(s).dtype == np.uint8
    np.testing.assert_array_equal(to_np(k), ek)
    np.testing.assert_array_equal(to_np(s), es)


def test_get_k_and_s_reads_page_rows_with_upstream_pitch(rng):
    """Upstream reads row b of page_indices at element b * shape[1] from the
    first element; a column-sliced numpy view cannot be read so and is refused."""
    buf = random_cache(rng, 6)
    wide = rng.integers(0, 6, size=(2, 5)).astype(np.int32)
    with pytest.raises(AssertionError, match="contiguous") as info:
        sglang.get_k_and_s(POOL, buf, wide[:, :2], np.array([64, 65], np.int64), 129, 65)
    assert isinstance(info.value, ValueError) and isinstance(info.value, nsa.NsaError)


def test_get_k_and_s_strided_torch_table_reads_upstreams_memory(rng):
    """A column-sliced torch table: upstream reads row b at element b * shape[1]
    of the memory from the view's first element, and so does the compat layer."""
    torch = pytest.importorskip("torch")
    buf = random_cache(rng, 6)
    wide = rng.integers(0, 6, size=(3, 5)).astype(np.int32)
    view = torch.from_numpy(wide)[:, :2]
    lens = np.array([100, 64, 65], np.int64)
    k, s = sglang.get_k_and_s(POOL, torch.from_numpy(buf), view, torch.from_numpy(lens), 229, 100)
    ek, es = upstream_get_k_and_s(buf, wide.reshape(-1)[:6].reshape(3, 2), lens)
    np.testing.assert_array_equal(k.numpy(), ek)
    np.testing.assert_array_equal(s.numpy(), es)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("loc_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("scale_2d", [False, True])
def test_set_k_and_s(rng, fw, loc_dtype, scale_2d):
    """The pool's call: keywords, out_cache_loc int64 (int32 is converted, as
    upstream does), fp8 K [N, 128], fp32 scale [N] or [N, 1]."""
    buf = random_cache(rng, 3)
    expected = buf.copy()
    loc = rng.permutation(192)[:20].astype(loc_dtype)
    loc[0], loc[1] = 0, 191                                 # slot 0 (SGLang's dummy slot) and the last slot
    k = rng.integers(0, 256, size=(20, 128), dtype=np.uint8)
    scale = rng.standard_normal((20, 1) if scale_2d else 20).astype(np.float32)
    k_arg = to_fw(fw, k)
    if fw == "torch":
        import torch
        k_arg = k_arg.view(torch.float8_e4m3fn)
    buf_arg = to_fw(fw, buf)
    assert sglang.set_k_and_s(pool=POOL, buf=buf_arg, loc=to_fw(fw, loc), index_k=k_arg,
                              index_k_scale=to_fw(fw, scale)) is None
    upstream_set_k_and_s(expected, loc, k, scale)
    np.testing.assert_array_equal(to_np(buf_arg), expected)


class _Fp8Like:
    """Stands in for an fp8 array of another kind (numpy has no fp8 dtypes):
    the compat layer must refuse it from its dtype alone."""

    def __init__(self, dtype, n):
        self.dtype, self.shape = dtype, (n, 128)


@pytest.mark.parametrize("dtype", ["float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "int8", "float16"])
def test_set_k_and_s_refuses_other_fp8_kinds_before_writing(rng, dtype):
    buf = random_cache(rng, 2)
    before = buf.copy()
    with pytest.raises(AssertionError, match="float8_e4m3fn") as info:
        sglang.set_k_and_s(POOL, buf, np.arange(4, dtype=np.int64), _Fp8Like(dtype, 4), np.ones(4, np.float32))
    assert isinstance(info.value, nsa.DTypeError)
    np.testing.assert_array_equal(buf, before)


def test_set_k_and_s_refuses_torch_fp8_kinds():
    torch = pytest.importorskip("torch")
    buf = torch.zeros(2, 8448, dtype=torch.uint8)
    for name in ("float8_e5m2", "float8_e4m3fnuz"):
        if not hasattr(torch, name):
            continue
        k = torch.ones(4, 128).to(getattr(torch, name))
        with pytest.raises(AssertionError, match="float8_e4m3fn"):
            sglang.set_k_and_s(POOL, buf, torch.arange(4), k, torch.ones(4))
        assert int(buf.sum()) == 0


@pytest.mark.parametrize("case", ["pool", "scale_rank", "scale_dtype", "loc_dtype", "rows"])
def test_accessor_errors_are_assertion_and_value_errors(rng, case):
    buf = random_cache(rng, 2)
    before = buf.copy()
    pool, loc, k = POOL, np.arange(4, dtype=np.int64), np.zeros((4, 128), np.uint8)
    scale = np.ones(4, np.float32)
    if case == "pool":
        pool = SimpleNamespace(page_size=1, index_head_dim=128)
    elif case == "scale_rank":
        scale = np.ones((4, 1, 1), np.float32)
    elif case == "scale_dtype":
        scale = np.ones(4, np.float64)
    elif case == "loc_dtype":
        loc = loc.astype(np.int16)
    elif case == "rows":
        k = np.zeros((3, 128), np.uint8)
    with pytest.raises(AssertionError) as info:
        sglang.set_k_and_s(pool, buf, loc, k, scale)
    assert isinstance(info.value, ValueError) and isinstance(info.value, nsa.NsaError)
    assert "argument" in str(info.value)
    np.testing.assert_array_equal(buf, before)


# ---------------------------------------------------------------- CUDA: replay, eager and captured

def _on_device(torch, backend, bs, rows):
    """Device copies of a backend's buffers with SGLang's aliasing (views of
    the shared page table and num_splits, seqlens_expanded = cache_seqlens in
    DECODE), and a function that copies them back for comparison."""
    host = backend.metadata(bs, rows)
    shared = {"page_table": torch.from_numpy(backend.page_table).cuda()}
    if backend.has_fm:
        shared["num_splits"] = torch.from_numpy(backend.num_splits).cuda()
        shared["tiles"] = torch.from_numpy(backend.tiles).cuda()
    dev = {name: (None if v is None else torch.from_numpy(v).cuda()) for name, v in host.items()}
    dev["page_table_1"] = shared["page_table"][:rows, :]
    if host["seqlens_expanded"] is host["cache_seqlens"]:
        dev["seqlens_expanded"] = dev["cache_seqlens"]
    if backend.has_fm:
        dev["flashmla_num_splits"] = shared["num_splits"][:rows + 1]
        dev["flashmla_metadata"] = shared["tiles"]

    def copy_back():
        torch.cuda.synchronize()
        backend.page_table[...] = shared["page_table"].cpu().numpy()
        if backend.has_fm:
            backend.num_splits[...] = shared["num_splits"].cpu().numpy()
            backend.tiles[...] = shared["tiles"].cpu().numpy()
        for name, v in host.items():
            if v is not None and name not in ("page_table_1", "flashmla_num_splits", "flashmla_metadata"):
                v[...] = dev[name].cpu().numpy()

    return dev, copy_back


@needs_cuda
@pytest.mark.parametrize("mode,bs", [(0, 3), (1, 3), (2, 3)])
def test_cuda_replay_captured_in_a_graph(rng, mode, bs):
    """The replay's copy captured once (after a warm-up call that uploads the
    destination table), then replayed with new precomputed values written
    into the same source tensors."""
    torch = cuda_torch()
    W = 200
    backend, expected_backend = Backend(8, W, True, True), Backend(8, W, True, True)
    extend = np.full(bs, N_DRAFT) if mode == 2 else None  # fixed shapes across replays
    src, s = precompute(rng, mode, bs, W, True, True, extend)
    rows = bs if mode == 0 else bs * N_DRAFT
    dst, copy_back = _on_device(torch, backend, bs, rows)
    dev_src = {name: (None if v is None else torch.from_numpy(v).cuda()) for name, v in src.items()}
    if mode == 0:
        dev_src["seqlens_expanded"] = dev_src["cache_seqlens"]
    args = ([dev_src[n] for n in SRC_ORDER] + [dst[n] for n in DST_ORDER]
            + [mode, s["bs"], s["max_len"], s["max_seqlen_k"], s["E"]])
    graph = captured(torch, lambda: sglang.fused_metadata_copy_cuda(*args))
    for _ in range(2):  # new values, same shapes, written into the captured sources
        new = {name: rng.integers(-1000, 1 << 20, size=v.shape).astype(np.int32) for name, v in src.items()}
        for name, v in dev_src.items():
            if not (mode == 0 and name == "seqlens_expanded"):
                v.copy_(torch.from_numpy(new[name]).cuda())
        graph.replay()
        copy_back()
        upstream_copy(new, expected_backend.metadata(bs, rows), mode, s["bs"], s["max_len"], s["max_seqlen_k"],
                      s["E"], True, True)
        for got, want in zip(backend.snapshot(), expected_backend.snapshot()):
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- DeepGEMM paged-MQA schedule

def test_get_paged_mqa_logits_metadata_signature():
    names = list(inspect.signature(sglang.get_paged_mqa_logits_metadata).parameters)
    assert names == ["context_lens", "block_kv", "num_sms"]
    assert "Mirrors" in sglang.get_paged_mqa_logits_metadata.__doc__


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("bs,next_n", [(1, 1), (32, 1), (33, 2), (64, 2), (4096, 1)])
def test_get_paged_mqa_logits_metadata_is_deepgemms_g4(rng, fw, bs, next_n):
    import nsa_reference as ref
    # SGLang passes seqlens.unsqueeze(-1) (next_n 1); vLLM-style callers [B, next_n], zeros included (padding).
    lens = rng.integers(0, 40000, (bs, next_n)).astype(np.int32)
    lens[::5] = 0
    for sms in (132, 78, 1):
        out = sglang.get_paged_mqa_logits_metadata(to_fw(fw, lens), 64, sms)
        assert tuple(out.shape) == (sms + 1, 2) and "int32" in str(out.dtype)
        np.testing.assert_array_equal(to_np(out), ref.paged_mqa_schedule(lens[:, -1], next_n, sms))
    zeros = to_fw(fw, np.zeros((bs, next_n), np.int32))  # a captured all-padding batch: every row (B, 0)
    np.testing.assert_array_equal(to_np(sglang.get_paged_mqa_logits_metadata(zeros, 64, 132)), [[bs, 0]] * 133)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_get_paged_mqa_logits_metadata_errors_are_runtime_errors(fw):
    lens = to_fw(fw, np.ones((4, 1), np.int32))
    for args, match in [((to_fw(fw, np.ones((4, 1), np.int64)), 64, 8), "int32"), ((lens, 128, 8), "block_kv"),
                        ((lens, 64, 0), "num_sms"), ((lens, 64, True), "num_sms")]:
        with pytest.raises(RuntimeError, match=match) as e:
            sglang.get_paged_mqa_logits_metadata(*args)
        assert isinstance(e.value, nsa.NsaError)


@needs_cuda
def test_get_paged_mqa_logits_metadata_cuda_matches_cpu(rng):
    torch = cuda_torch()
    lens = rng.integers(0, 40000, (300, 2)).astype(np.int32)
    expected = sglang.get_paged_mqa_logits_metadata(lens, 64, 132)
    out = sglang.get_paged_mqa_logits_metadata(torch.from_numpy(lens).cuda(), 64, 132)
    assert out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
