"""nsa.torch_ops: the ops as torch.library custom ops. Every op runs through
torch.ops.nsa against the numpy reference; a function calling them compiles
with torch.compile(fullgraph=True) (no graph break) and gives the eager
results; on CUDA the compiled function is captured in a CUDA graph and
replayed. CPU part skipped without torch, CUDA part without a GPU."""

import numpy as np
import pytest

try:
    import torch
except ImportError:
    pytest.skip("torch not installed (scripts/run.sh test installs it into .venv unless NSA_TORCH=0)", allow_module_level=True)

import nsa  # noqa: E402
import nsa.torch_ops as nsa_ops  # noqa: E402
import nsa_reference as ref  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and nsa.cuda_built()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA, reason="needs a GPU, torch CUDA and a CUDA build of nsa"))]
POISON = 0xA5


def np_(t):
    return t.detach().cpu().numpy()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(11)


def test_ops_are_registered_with_schemas():
    for name in ("quantize_and_store_k", "store_k_and_s", "gather_k", "gather_s", "gather_k_and_s",
                 "topk_transform", "paged_mqa_logits", "indexer_topk", "build_metadata", "copy_metadata"):
        schema = str(getattr(torch.ops.nsa, name).default._schema)
        assert schema.startswith(f"nsa::{name}(")
        assert "!" in schema, f"{name}: the written argument is not declared as mutated: {schema}"


def make_inputs(gen, device, pages=6, bs=3):
    cache = torch.randint(0, 256, (pages, 8448), dtype=torch.uint8, generator=gen)
    k = (torch.randn(40, 128, generator=gen) * 2).to(torch.bfloat16)
    slots = torch.randperm(pages * 64, generator=gen)[:40].to(torch.int64)
    slots[::9] = -1
    lens = torch.tensor([65, 1, 130], dtype=torch.int32)[:bs]
    table = torch.stack([torch.randperm(pages, generator=gen)[:3] for _ in range(bs)]).to(torch.int32)
    return [t.to(device) for t in (cache, k, slots, lens, table)]


def step(cache, k, slots, table, lens, out_k, out_s):
    nsa_ops.quantize_and_store_k(cache, k, slots, mode="ue8m0")
    nsa_ops.gather_k_and_s(cache, table, lens, out_k=out_k, out_s=out_s)
    one_k = nsa_ops.gather_k(cache, 65, table[0], out=torch.empty(65, 128, dtype=torch.uint8, device=cache.device))
    one_s = nsa_ops.gather_s(cache, 65, table[0])
    return one_k, one_s


def expected_step(cache, k, slots, table, lens):
    c = np_(cache).copy()
    ref.quantize_and_store_k(c, np_(k.view(torch.int16)).view(np.uint16), np_(slots), "ue8m0")
    ek, es = ref.gather_k_and_s(c, np_(table), np_(lens))
    return c, ek, es


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_step_matches_reference(gen, device, compiled):
    cache, k, slots, lens, table = make_inputs(gen, device)
    total = int(lens.sum())
    out_k = torch.full((total + 3, 128), POISON, dtype=torch.uint8, device=device)
    out_s = torch.full((total + 3,), float("nan"), dtype=torch.float32, device=device)
    c, ek, es = expected_step(cache, k, slots, table, lens)
    fn = torch.compile(step, fullgraph=True, dynamic=False) if compiled else step
    one_k, one_s = fn(cache, k, slots, table, lens, out_k, out_s)
    if device == "cuda":
        torch.cuda.synchronize()
    np.testing.assert_array_equal(np_(cache), c)
    np.testing.assert_array_equal(np_(out_k)[:total], ek)
    np.testing.assert_array_equal(np_(out_s)[:total].view(np.uint32), es.view(np.uint32))
    assert (np_(out_k)[total:] == POISON).all() and np.isnan(np_(out_s)[total:]).all()
    np.testing.assert_array_equal(np_(one_k), ek[:65])
    np.testing.assert_array_equal(np_(one_s).view(np.uint32), es[:65].view(np.uint32))


def test_compile_has_no_graph_break(gen):
    cache, k, slots, lens, table = make_inputs(gen, "cpu")
    out_k = torch.empty(196, 128, dtype=torch.uint8)
    out_s = torch.empty(196, dtype=torch.float32)
    explanation = torch._dynamo.explain(step)(cache, k, slots, table, lens, out_k, out_s)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_store_k_and_s_float8_and_errors(gen):
    cache, _, slots, _, _ = make_inputs(gen, "cpu")
    expected = np_(cache).copy()
    k8 = torch.randint(0, 256, (40, 128), dtype=torch.uint8, generator=gen)
    scale = torch.rand(40, generator=gen)
    k_in = k8.view(torch.float8_e4m3fn) if hasattr(torch, "float8_e4m3fn") else k8
    torch.compile(nsa_ops.store_k_and_s, fullgraph=True)(cache, k_in, scale, slots)
    ref.store_k_and_s(expected, np_(k8), np_(scale), np_(slots))
    np.testing.assert_array_equal(np_(cache), expected)
    before = np_(cache).copy()
    with pytest.raises(nsa.DTypeError, match="'slots'"):
        nsa_ops.store_k_and_s(cache, k8, scale, slots.to(torch.int32))
    with pytest.raises(nsa.InvalidArgumentError, match="'mode'"):
        nsa_ops.quantize_and_store_k(cache, torch.zeros(1, 128, dtype=torch.bfloat16), slots[:1], mode="fp16")
    np.testing.assert_array_equal(np_(cache), before)


def maybe_compile(fn, compiled):
    return torch.compile(fn, fullgraph=True, dynamic=False) if compiled else fn


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("page_size,dtype,mode,formula", [
    (16, torch.bfloat16, "fp32", "divide"),
    (128, torch.float32, "fp32", "multiply"),
    (32, torch.float16, "ue8m0", "divide"),
])
def test_cache_ops_page_size_dtypes_and_formula(gen, device, compiled, page_size, dtype, mode, formula):
    pages, n = 16, 120
    cache = torch.randint(0, 256, (pages, page_size * 132), dtype=torch.uint8, generator=gen)
    k = (torch.randn(n, 128, generator=gen) * 3).to(dtype)
    perm = torch.randperm(pages * page_size, generator=gen).to(torch.int64)
    slots, second = perm[:n].clone(), perm[n:2 * n].clone()  # disjoint: the store overwrites no quantized row
    slots[::7] = -1
    k8 = torch.randint(0, 256, (n, 128), dtype=torch.uint8, generator=gen)
    scale = torch.rand(n, generator=gen)
    table = torch.stack([torch.randperm(pages, generator=gen)[:3] for _ in range(2)]).to(torch.int32)
    lens = torch.tensor([2 * page_size + 1, page_size - 1], dtype=torch.int32)
    length = int(lens[0])

    expected = np_(cache).copy()
    k_np = np_(k.view(torch.int16)).view(np.uint16) if dtype == torch.bfloat16 else np_(k)
    ref.quantize_and_store_k(expected, k_np, np_(slots), mode, page=page_size, formula=formula)
    if (mode, formula) == ("fp32", "divide"):  # these rows tell the formulas apart (exact e4m3 ties of bf16)
        other = np_(cache).copy()
        ref.quantize_and_store_k(other, k_np, np_(slots), mode, page=page_size, formula="multiply")
        assert (other != expected).any()
    ref.store_k_and_s(expected, np_(k8), np_(scale), np_(second), page=page_size)
    ek, es = ref.gather_k_and_s(expected, np_(table), np_(lens), page=page_size)
    total = ek.shape[0]

    cache, k, slots, k8, scale, second, table, lens = (
        t.to(device) for t in (cache, k, slots, k8, scale, second, table, lens))
    out_k = torch.full((total + 2, 128), POISON, dtype=torch.uint8, device=device)
    out_s = torch.full((total + 2,), float("nan"), dtype=torch.float32, device=device)

    def cache_step(cache, k, slots, k8, scale, second, table, lens, out_k, out_s):
        nsa_ops.quantize_and_store_k(cache, k, slots, mode, page_size=page_size, scale_formula=formula)
        nsa_ops.store_k_and_s(cache, k8, scale, second, page_size=page_size)
        nsa_ops.gather_k_and_s(cache, table, lens, out_k=out_k, out_s=out_s, page_size=page_size)
        return (nsa_ops.gather_k(cache, length, table[0], page_size=page_size),
                nsa_ops.gather_s(cache, length, table[0], page_size=page_size))

    one_k, one_s = maybe_compile(cache_step, compiled)(cache, k, slots, k8, scale, second, table, lens, out_k, out_s)
    sync(device)
    np.testing.assert_array_equal(np_(cache), expected)
    np.testing.assert_array_equal(np_(out_k)[:total], ek)
    np.testing.assert_array_equal(np_(out_s)[:total].view(np.uint32), es.view(np.uint32))
    assert (np_(out_k)[total:] == POISON).all() and np.isnan(np_(out_s)[total:]).all()
    np.testing.assert_array_equal(np_(one_k), ek[:length])
    np.testing.assert_array_equal(np_(one_s).view(np.uint32), es[:length].view(np.uint32))


def random_fp8(gen, shape):
    v = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    big = (v & 0x7F) >= 0x70
    v[big] &= 0xB7  # no NaN codes, modest magnitudes
    return v


def indexer_inputs(gen, batch, n, page_size=64, pages=8, columns=3):
    q = random_fp8(gen, (batch, n, 64, 128))
    weights = torch.rand(batch * n, 64, generator=gen)
    cache = random_fp8(gen, (pages, page_size * 132))
    cache[:, page_size * 128:] = (torch.rand(pages, page_size, generator=gen) * 1e-2 + 1e-3).view(
        torch.uint8).reshape(pages, page_size * 4)
    lens = torch.tensor([page_size * columns - 5, 1, page_size + 1][:batch], dtype=torch.int32)
    table = torch.stack([torch.randperm(pages, generator=gen)[:columns] for _ in range(batch)]).to(torch.int32)
    table[-1, -1] = -1  # a padding page
    return q, weights, cache, lens, table


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_topk_transform_matches_nsa(gen, device, compiled):
    k, rows_per_request, batch = 512, 2, 3
    width = 1400
    scores = torch.randn(batch * rows_per_request, width + 7, generator=gen)[:, :width]  # strided rows
    lens = torch.tensor([width, 3, k + 9], dtype=torch.int32)
    table = torch.randint(0, 1000, (batch, (width + 63) // 64), dtype=torch.int32, generator=gen)
    table[0, 1] = -1
    ragged_lens = torch.tensor([0, 1, k, k + 1, width - 20, 700], dtype=torch.int32)
    starts = torch.tensor([0, 5, 0, 3, 20, 100], dtype=torch.int32)
    offsets = torch.randint(0, 10000, (batch * rows_per_request,), dtype=torch.int32, generator=gen)
    want_paged, want_raw = nsa.topk_transform(np_(scores), np_(lens), k, rows_per_request=rows_per_request,
                                              transform="paged64", page_table=np_(table), return_raw=True,
                                              order="ascending")
    want_ragged = nsa.topk_transform(np_(scores), np_(ragged_lens), k, row_starts=np_(starts), transform="ragged",
                                     offsets=np_(offsets), order="ascending")

    scores, lens, table, ragged_lens, starts, offsets = (
        t.to(device) for t in (scores, lens, table, ragged_lens, starts, offsets))
    out = torch.full((batch * rows_per_request, k + 3), -7, dtype=torch.int32, device=device)

    def topk_step(scores, lens, table, ragged_lens, starts, offsets, out):
        paged, raw = nsa_ops.topk_transform(scores, lens, k, rows_per_request=rows_per_request, transform="paged64",
                                            page_table=table, return_raw=True, order="ascending")
        nsa_ops.topk_transform(scores, ragged_lens, k, row_starts=starts, transform="ragged", offsets=offsets,
                               out=out, order="ascending")
        return paged, raw

    paged, raw = maybe_compile(topk_step, compiled)(scores, lens, table, ragged_lens, starts, offsets, out)
    sync(device)
    np.testing.assert_array_equal(np_(paged), want_paged)
    np.testing.assert_array_equal(np_(raw), want_raw)
    np.testing.assert_array_equal(np_(out)[:, :k], want_ragged)
    assert (np_(out)[:, k:] == -7).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_paged_mqa_logits_and_indexer_topk_match_nsa(gen, device, compiled):
    batch, n, k = 3, 2, 512
    q, weights, cache, lens, table = indexer_inputs(gen, batch, n)
    q16, table16 = random_fp8(gen, (1, 1, 64, 128)), torch.tensor([[2, 0]], dtype=torch.int32)
    cache16 = random_fp8(gen, (4, 16 * 132))
    lens16 = torch.tensor([20], dtype=torch.int32)
    w16 = torch.rand(1, 64, generator=gen)
    want_logits = nsa.paged_mqa_logits(np_(q), np_(weights), np_(cache), np_(lens), np_(table))
    want_logits16 = nsa.paged_mqa_logits(np_(q16), np_(w16), np_(cache16), np_(lens16), np_(table16), page_size=16)
    want_top, want_raw = nsa.indexer_topk(np_(q), np_(weights), np_(cache), np_(lens), np_(table), k,
                                          return_raw=True, order="ascending")

    q, weights, cache, lens, table, q16, table16, cache16, lens16, w16 = (
        t.to(device) for t in (q, weights, cache, lens, table, q16, table16, cache16, lens16, w16))
    q_in = q.view(torch.float8_e4m3fn) if hasattr(torch, "float8_e4m3fn") else q
    workspace = torch.empty(batch * n, table.shape[1] * 64, dtype=torch.float32, device=device)

    def indexer_step(q, weights, cache, lens, table, q16, w16, cache16, lens16, table16, workspace):
        logits = nsa_ops.paged_mqa_logits(q, weights, cache, lens, table)
        logits16 = nsa_ops.paged_mqa_logits(q16, w16, cache16, lens16, table16, page_size=16)
        top, raw = nsa_ops.indexer_topk(q, weights, cache, lens, table, k, workspace=workspace, return_raw=True,
                                        order="ascending")
        return logits, logits16, top, raw

    logits, logits16, top, raw = maybe_compile(indexer_step, compiled)(
        q_in, weights, cache, lens, table, q16, w16, cache16, lens16, table16, workspace)
    sync(device)
    if device == "cpu":  # the same backend as the eager numpy call: bit-identical
        compare = np.testing.assert_array_equal
    else:  # another summation order: -inf at the same places, DeepGEMM's calc_diff elsewhere
        def compare(got, want):
            np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
            finite = np.isfinite(want)
            x, y = got[finite].astype(np.float64), want[finite].astype(np.float64)
            denom = (x * x + y * y).sum()
            assert denom == 0 or 1 - 2 * (x * y).sum() / denom < 1e-6
    compare(np_(logits), want_logits)
    compare(np_(logits16), want_logits16)
    compare(np_(workspace), want_logits)
    # indexer_topk is the top-k of its own logits (the workspace), on any device.
    top_of_workspace, raw_of_workspace = nsa.topk_transform(
        np_(workspace), np_(lens), k, rows_per_request=n, transform="paged64", page_table=np_(table),
        return_raw=True, order="ascending")
    np.testing.assert_array_equal(np_(top), top_of_workspace)
    np.testing.assert_array_equal(np_(raw), raw_of_workspace)
    if device == "cpu":
        np.testing.assert_array_equal(np_(top), want_top)
        np.testing.assert_array_equal(np_(raw), want_raw)


def test_new_ops_compile_without_graph_break(gen):
    q, weights, cache, lens, table = indexer_inputs(gen, 2, 1)
    scores = torch.randn(2, 300, generator=gen)
    kbf = torch.randn(4, 128, generator=gen).to(torch.float16)
    slots = torch.arange(4, dtype=torch.int64)
    cache16 = torch.zeros(2, 16 * 132, dtype=torch.uint8)

    def fn(q, weights, cache, lens, table, scores, kbf, slots, cache16):
        nsa_ops.quantize_and_store_k(cache16, kbf, slots, page_size=16, scale_formula="divide")
        logits = nsa_ops.paged_mqa_logits(q, weights, cache, lens, table)
        return logits, nsa_ops.topk_transform(scores, lens, 512), nsa_ops.indexer_topk(q, weights, cache, lens, table,
                                                                                       512)

    explanation = torch._dynamo.explain(fn)(q, weights, cache, lens, table, scores, kbf, slots, cache16)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_new_arguments_are_checked_before_writing(gen):
    cache, k, slots, lens, _ = make_inputs(gen, "cpu")
    before = np_(cache).copy()
    with pytest.raises(nsa.InvalidArgumentError, match="'scale_formula'"):
        nsa_ops.quantize_and_store_k(cache, k, slots, scale_formula="round")
    with pytest.raises(nsa.InvalidArgumentError, match="'page_size'"):
        nsa_ops.quantize_and_store_k(cache, k, slots, page_size=48)
    with pytest.raises(nsa.InvalidArgumentError, match="'page_size'"):
        nsa_ops.gather_k(cache, 3, lens, page_size=8)
    np.testing.assert_array_equal(np_(cache), before)
    scores = torch.randn(2, 100, generator=gen)
    with pytest.raises(nsa.InvalidArgumentError, match="'transform'"):
        nsa_ops.topk_transform(scores, lens[:2], 512, transform="paged32")
    with pytest.raises(nsa.InvalidArgumentError, match="'order'"):
        nsa_ops.topk_transform(scores, lens[:2], 512, order="descending")
    with pytest.raises(nsa.InvalidArgumentError, match="'rows_per_request'"):
        nsa_ops.topk_transform(scores, lens[:2], 512, rows_per_request=0)
    q, weights, icache, ilens, table = indexer_inputs(gen, 2, 1)
    with pytest.raises(nsa.InvalidArgumentError, match="'order'"):
        nsa_ops.indexer_topk(q, weights, icache, ilens, table, 512, order="sorted")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU, torch CUDA and a CUDA build of nsa")
def test_compiled_step_in_a_cuda_graph(gen):
    cache, k, slots, lens, table = make_inputs(gen, "cuda")
    total = int(lens.sum())
    out_k = torch.empty(total, 128, dtype=torch.uint8, device="cuda")
    out_s = torch.empty(total, dtype=torch.float32, device="cuda")
    fn = torch.compile(step, fullgraph=True, dynamic=False)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn(cache.clone(), k, slots, table, lens, out_k, out_s)  # compile and warm up outside the capture
    torch.cuda.synchronize()
    start = cache.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn(cache, k, slots, table, lens, out_k, out_s)
    cache.copy_(start)
    out_k.fill_(POISON)
    graph.replay()
    torch.cuda.synchronize()
    c, ek, es = expected_step(start, k, slots, table, lens)
    np.testing.assert_array_equal(np_(cache), c)
    np.testing.assert_array_equal(np_(out_k), ek)
    np.testing.assert_array_equal(np_(captured[0]), ek[:65])


@pytest.mark.parametrize("device", DEVICES)
def test_metadata_ops_compile(device):
    bs, width = 3, 256
    dest = {name: torch.full(shape, -7, dtype=torch.int32, device=device) for name, shape in [
        ("cache_seqlens", (bs,)), ("cu_seqlens_k", (bs + 1,)), ("page_table_1", (bs, width)),
        ("nsa_cache_seqlens", (bs,)), ("nsa_cu_seqlens_k", (bs + 1,))]}
    eager = {name: t.clone() for name, t in dest.items()}
    targets = nsa.MetadataTargets(dest)
    eager_targets = nsa.MetadataTargets(eager)
    seq_lens = torch.tensor([5, 200, 64], dtype=torch.int32, device=device)
    pool = torch.tensor([2, 0, 1], dtype=torch.int32, device=device)
    req_to_token = torch.arange(4 * width, dtype=torch.int32, device=device).reshape(4, width)

    def build(t, s, p, r):
        nsa_ops.build_metadata(t, s, p, r, mode="decode", topk=128)

    compiled = torch.compile(build, fullgraph=True)
    compiled(targets, seq_lens, pool, req_to_token)
    nsa.build_metadata(eager_targets, seq_lens, pool, req_to_token, mode="decode", topk=128)
    # The same compiled function with other targets writes those (the targets are not baked into the graph).
    other = {name: torch.full_like(t, -7) for name, t in dest.items()}
    compiled(nsa.MetadataTargets(other), seq_lens, pool, req_to_token)
    if device == "cuda":
        torch.cuda.synchronize()
    for name in dest:
        assert torch.equal(dest[name], eager[name]), name
        assert torch.equal(other[name], eager[name]), name
    assert int(dest["cache_seqlens"][1]) == 200

    # copy_metadata of the fields just built: compiled and eager write the same.
    copy_dest = {name: torch.full_like(t, -7) for name, t in dest.items()}
    copy_eager = {name: torch.full_like(t, -7) for name, t in dest.items()}
    torch.compile(lambda t, src: nsa_ops.copy_metadata(t, src, mode="decode", batch_size=bs, max_len=width),
                  fullgraph=True)(nsa.MetadataTargets(copy_dest), dest)
    nsa.copy_metadata(nsa.MetadataTargets(copy_eager), dest, mode="decode", batch_size=bs, max_len=width)
    if device == "cuda":
        torch.cuda.synchronize()
    for name in dest:
        assert torch.equal(copy_dest[name], copy_eager[name]), name
    assert torch.equal(copy_dest["page_table_1"], dest["page_table_1"])


@pytest.mark.parametrize("device", DEVICES)
def test_build_metadata_schedule_field_compiles(device):
    bs, width, sms = 3, 1024, 8
    dest = {name: torch.full(shape, -7, dtype=torch.int32, device=device) for name, shape in [
        ("cache_seqlens", (bs,)), ("cu_seqlens_k", (bs + 1,)), ("page_table_1", (bs, width)),
        ("nsa_cache_seqlens", (bs,)), ("nsa_cu_seqlens_k", (bs + 1,)), ("paged_mqa_schedule", (sms + 1, 2))]}
    targets = nsa.MetadataTargets(dest)
    lens = [0, 700, 64]
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    pool = torch.tensor([2, 0, 1], dtype=torch.int32, device=device)
    req_to_token = torch.arange(4 * width, dtype=torch.int32, device=device).reshape(4, width)

    def build(t, s, p, r):
        nsa_ops.build_metadata(t, s, p, r, mode="decode", paged_mqa_layout="g1", paged_mqa_clamp_min_len=True)

    torch.compile(build, fullgraph=True)(targets, seq_lens, pool, req_to_token)
    if device == "cuda":
        torch.cuda.synchronize()
    np.testing.assert_array_equal(np_(dest["paged_mqa_schedule"]),
                                  ref.paged_mqa_schedule(lens, 1, sms, g1=True, clamp_min_len=True))
