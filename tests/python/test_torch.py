"""torch tensors: CPU tensors (zero-copy, outputs allocated by torch, bf16 and
float8 inputs), and CUDA tensors on the GPU: every op against the numpy
reference, the caller's current stream, an explicit stream, CUDA-graph
capture and replay, and the sglang compat layer. Skipped without torch; the
CUDA part is skipped without a GPU or a CUDA build of nsa."""

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nsa  # noqa: E402
import nsa_reference as ref  # noqa: E402
from nsa.compat import sglang  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and nsa.cuda_built()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU, torch CUDA and a CUDA build of nsa")
POOL = SimpleNamespace(page_size=64, index_head_dim=128, quant_block_size=128)
POISON = 0xA5
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def np_(t):
    return t.detach().cpu().numpy()


def random_cache(gen, pages, device):
    return torch.randint(0, 256, (pages, 8448), dtype=torch.uint8, generator=gen).to(device)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(7)


# ---------------------------------------------------------------- every op, CPU and CUDA tensors

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["fp32", "ue8m0"])
def test_quantize_and_store_k_bf16(gen, device, mode):
    cache = random_cache(gen, 4, device)
    expected = np_(cache)
    k = (torch.randn(50, 160, generator=gen) * 3).to(torch.bfloat16).to(device)[:, :128]  # strided rows
    slots = torch.randperm(256, generator=gen)[:50].to(torch.int64)
    slots[::7] = -1
    nsa.quantize_and_store_k(cache, k, slots.to(device), mode=mode)
    ref.quantize_and_store_k(expected, np_(k.view(torch.int16)).view(np.uint16), np_(slots), mode)
    if device == "cuda":
        torch.cuda.synchronize()
    np.testing.assert_array_equal(np_(cache), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_store_k_and_s_float8(gen, device):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch without float8")
    cache = random_cache(gen, 2, device)
    expected = np_(cache)
    k = torch.randint(0, 256, (20, 128), dtype=torch.uint8, generator=gen)
    scale = torch.rand(20, 1, generator=gen)
    slots = torch.randperm(128, generator=gen)[:20].to(torch.int64)
    nsa.store_k_and_s(cache, k.view(torch.float8_e4m3fn).to(device), scale.to(device), slots.to(device))
    ref.store_k_and_s(expected, np_(k), np_(scale), np_(slots))
    np.testing.assert_array_equal(np_(cache), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("formula", ["multiply", "divide"])
def test_quantize_and_store_k_fp16_fp32_vllm_shaped_cache(gen, device, dtype, formula):
    # vLLM's view of the cache: [num_blocks, block_size, 132] uint8, block size 16 here
    cache = torch.randint(0, 256, (8, 16, 132), dtype=torch.uint8, generator=gen).to(device)
    expected = np_(cache)
    k = (torch.randn(40, 128, generator=gen) * 5).to(getattr(torch, dtype)).to(device)
    slots = torch.randperm(128, generator=gen)[:40].to(torch.int64)
    slots[::5] = -1
    nsa.quantize_and_store_k(cache, k, slots.to(device), "fp32", page_size=16, scale_formula=formula)
    ref.quantize_and_store_k(expected, np_(k), np_(slots), "fp32", page=16, formula=formula)
    if device == "cuda":
        torch.cuda.synchronize()
    np.testing.assert_array_equal(np_(cache), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_out_k_may_be_float8_e4m3fn_only(gen, device):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch without float8")
    cache = random_cache(gen, 3, device)
    lens = torch.tensor([70, 5], dtype=torch.int32, device=device)
    table = torch.tensor([[2, 0], [1, 1]], dtype=torch.int32, device=device)
    out_k = torch.zeros(75, 128, dtype=torch.float8_e4m3fn, device=device)
    out_s = torch.zeros(75, dtype=torch.float32, device=device)
    kk, _ = nsa.gather_k_and_s(cache, table, lens, out_k=out_k, out_s=out_s)
    assert kk is out_k
    ek, _ = ref.gather_k_and_s(np_(cache), np_(table), np_(lens))
    np.testing.assert_array_equal(np_(out_k.view(torch.uint8)), ek)
    if hasattr(torch, "float8_e5m2"):
        with pytest.raises(nsa.InvalidArgumentError, match="'out_k'.*float8_e4m3fn"):
            nsa.gather_k_and_s(cache, table, lens, out_k=out_k.view(torch.float8_e5m2), out_s=out_s)


@pytest.mark.parametrize("device", DEVICES)
def test_gathers_allocate_with_torch(gen, device):
    cache = random_cache(gen, 6, device)
    pages = torch.tensor([5, 0, 3], dtype=torch.int32, device=device)
    k = nsa.gather_k(cache, 150, pages)
    s = nsa.gather_s(cache, 150, pages)
    assert isinstance(k, torch.Tensor) and k.device == cache.device and k.dtype == torch.uint8
    assert s.dtype == torch.float32 and s.shape == (150,)
    np.testing.assert_array_equal(np_(k), ref.gather_k(np_(cache), 150, np_(pages)))
    np.testing.assert_array_equal(np_(s).view(np.uint32), ref.gather_s(np_(cache), 150, np_(pages)).view(np.uint32))
    lens = torch.tensor([3, 0, 129, 64], dtype=torch.int64, device=device)
    table = torch.randint(0, 6, (4, 5), dtype=torch.int64, generator=gen).to(device)[:, :3]
    kk, ss = nsa.gather_k_and_s(cache, table, lens, capacity=196)
    ek, es = ref.gather_k_and_s(np_(cache), np_(table), np_(lens))
    np.testing.assert_array_equal(np_(kk), ek)
    np.testing.assert_array_equal(np_(ss).view(np.uint32), es.view(np.uint32))


def test_torch_cpu_is_zero_copy(gen):
    cache = random_cache(gen, 2, "cpu")
    out = torch.zeros(64, 128, dtype=torch.uint8)
    nsa.gather_k(cache, 64, torch.tensor([1], dtype=torch.int32), out=out)
    assert torch.equal(out, cache[1, :8192].view(64, 128))
    ids = torch.tensor([0], dtype=torch.int64, requires_grad=False)
    nsa.gather_k(cache, 64, ids, out=out[:64])  # a view works as an output too
    assert torch.equal(out, cache[0, :8192].view(64, 128))


def test_gather_k_and_s_into_float8_out_k(gen):
    """vLLM passes its K output as float8_e4m3fn; the bytes are written, the tensor returned as given."""
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("torch without float8")
    cache = random_cache(gen, 3, "cpu")
    table = torch.tensor([[2, 0], [1, 2]], dtype=torch.int32)
    lens = torch.tensor([70, 5], dtype=torch.int32)
    out_k = torch.full((80, 128), POISON, dtype=torch.uint8).view(torch.float8_e4m3fn)
    out_s = torch.full((80,), float("nan"), dtype=torch.float32)
    rk, rs = nsa.gather_k_and_s(cache, table, lens, out_k=out_k, out_s=out_s)
    assert rk is out_k and rs is out_s
    ek, es = ref.gather_k_and_s(np_(cache), np_(table), np_(lens))
    np.testing.assert_array_equal(np_(out_k.view(torch.uint8))[:75], ek)
    assert (np_(out_k.view(torch.uint8))[75:] == POISON).all()
    np.testing.assert_array_equal(np_(out_s)[:75].view(np.uint32), es.view(np.uint32))


def test_torch_errors_name_arguments(gen):
    cache = random_cache(gen, 1, "cpu")
    with pytest.raises(nsa.DTypeError, match="'page_ids'"):
        nsa.gather_k(cache, 1, torch.zeros(1, dtype=torch.float32))
    with pytest.raises(nsa.InvalidArgumentError, match="'out'"):
        nsa.gather_k(cache, 2, torch.zeros(1, dtype=torch.int32), out=torch.zeros(2, 256, dtype=torch.uint8)[:, ::2])


@cuda_only
def test_mixed_devices_are_rejected(gen):
    cache = random_cache(gen, 1, "cuda")
    out = torch.full((1, 128), 7, dtype=torch.uint8, device="cuda")
    with pytest.raises(nsa.InvalidArgumentError, match="'page_ids'.*cuda:0"):
        nsa.gather_k(cache, 1, torch.zeros(1, dtype=torch.int32), out=out)
    with pytest.raises(nsa.InvalidArgumentError, match="capacity"):
        nsa.gather_k_and_s(cache, torch.zeros(1, 1, dtype=torch.int32, device="cuda"),
                           torch.ones(1, dtype=torch.int32, device="cuda"))
    assert (out == 7).all()


# ---------------------------------------------------------------- streams

def _sleep_then(stream, fn):
    """Enqueue a long sleep then `fn` on `stream`: anything `fn` launches on
    another stream runs early and is detectably out of order."""
    if not hasattr(torch.cuda, "_sleep"):
        pytest.skip("torch.cuda._sleep not available")
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)
        fn()


@cuda_only
def test_runs_on_torch_current_stream(gen):
    cache = random_cache(gen, 64, "cuda")
    pages = torch.arange(64, dtype=torch.int32, device="cuda")
    out = torch.empty(4096, 128, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())

    def work():
        out.fill_(0x5A)  # ordered before the gather only if the gather runs on `side`
        nsa.gather_k(cache, 4096, pages, out=out)

    _sleep_then(side, work)
    side.synchronize()
    np.testing.assert_array_equal(np_(out), ref.gather_k(np_(cache), 4096, np_(pages)))


@cuda_only
def test_explicit_stream_argument(gen):
    cache = random_cache(gen, 16, "cuda")
    pages = torch.arange(16, dtype=torch.int64, device="cuda")
    out = torch.empty(1024, dtype=torch.float32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())

    def work():
        out.fill_(float("nan"))
        # the current stream is `side` here too, so pass it explicitly in both forms
        nsa.gather_s(cache, 1024, pages, out=out, stream=side)
        nsa.gather_s(cache, 1024, pages, out=out, stream=side.cuda_stream)

    _sleep_then(side, work)
    side.synchronize()
    np.testing.assert_array_equal(np_(out).view(np.uint32), ref.gather_s(np_(cache), 1024, np_(pages)).view(np.uint32))


@cuda_only
def test_prepared_gather_on_cuda_follows_the_current_stream(gen):
    cache = random_cache(gen, 32, "cuda")
    lens = torch.tensor([100, 0, 64, 1], dtype=torch.int32, device="cuda")
    table = torch.randint(0, 32, (4, 2), dtype=torch.int32, generator=gen).to("cuda")
    out_k = torch.full((200, 128), 0xA5, dtype=torch.uint8, device="cuda")
    out_s = torch.full((200,), float("nan"), dtype=torch.float32, device="cuda")
    call = nsa.prepare_gather_k_and_s(cache, table, lens, out_k=out_k, out_s=out_s)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    _sleep_then(side, call)  # the current stream inside is `side`
    side.synchronize()
    ek, es = ref.gather_k_and_s(np_(cache), np_(table), np_(lens))
    np.testing.assert_array_equal(np_(out_k)[:165], ek)
    np.testing.assert_array_equal(np_(out_s)[:165].view(np.uint32), es.view(np.uint32))
    assert (np_(out_k)[165:] == 0xA5).all()
    lens.copy_(torch.tensor([3, 2, 1, 0], dtype=torch.int32))  # new contents, same tensor
    call(stream=torch.cuda.current_stream())
    torch.cuda.synchronize()
    np.testing.assert_array_equal(np_(out_k)[:6], ref.gather_k_and_s(np_(cache), np_(table), np_(lens))[0])


# ---------------------------------------------------------------- CUDA graphs

@cuda_only
def test_cuda_graph_capture_and_replay(gen):
    cache = random_cache(gen, 32, "cuda")
    lens = torch.zeros(4, dtype=torch.int32, device="cuda")
    table = torch.zeros(4, 8, dtype=torch.int32, device="cuda")
    out_k = torch.empty(2048, 128, dtype=torch.uint8, device="cuda")
    out_s = torch.empty(2048, dtype=torch.float32, device="cuda")
    k_in = torch.zeros(16, 128, dtype=torch.bfloat16, device="cuda")
    slots = torch.full((16,), -1, dtype=torch.int64, device="cuda")

    def step():
        nsa.quantize_and_store_k(cache, k_in, slots)
        nsa.gather_k_and_s(cache, table, lens, out_k=out_k, out_s=out_s)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture, as torch recommends
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for it in range(5):
        new_lens = torch.randint(0, 257, (4,), generator=gen, dtype=torch.int32)
        lens.copy_(new_lens)
        table.copy_(torch.randint(0, 32, (4, 8), generator=gen, dtype=torch.int32))
        k_in.copy_(torch.randn(16, 128, generator=gen).to(torch.bfloat16))
        slots.copy_(torch.randperm(32 * 64, generator=gen)[:16])
        expected_cache = np_(cache)
        graph.replay()
        torch.cuda.synchronize()
        ref.quantize_and_store_k(expected_cache, np_(k_in.view(torch.int16)).view(np.uint16), np_(slots), "fp32")
        np.testing.assert_array_equal(np_(cache), expected_cache)
        total = int(new_lens.sum())
        ek, es = ref.gather_k_and_s(np_(cache), np_(table), np_(lens))
        np.testing.assert_array_equal(np_(out_k[:total]), ek)
        np.testing.assert_array_equal(np_(out_s[:total]).view(np.uint32), es.view(np.uint32))


def _graph_destination(rows, bs, width):
    z = lambda *s: torch.zeros(*s, dtype=torch.int32, device="cuda")  # noqa: E731
    return {"cache_seqlens": z(bs), "cu_seqlens_k": z(bs + 1), "page_table_1": z(rows, width),
            "seqlens_expanded": z(rows), "nsa_cache_seqlens": z(rows), "nsa_cu_seqlens_k": z(rows + 1),
            "real_page_table": z(rows, -(-width // 64))}


@cuda_only
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_build_metadata_cuda_graph(gen, mode):
    bs, n, width, topk = 8, 4, 700, 256
    rows = bs if mode == 0 else bs * n
    pool_rows = 16
    req_to_token = (torch.randperm(pool_rows * 12, generator=gen)[:pool_rows * 12].view(pool_rows, 12, 1) * 64
                    + torch.arange(64)).view(pool_rows, -1)[:, :width].to(torch.int32).cuda()
    seq_lens = torch.ones(bs, dtype=torch.int64, device="cuda")
    rpi = torch.zeros(bs, dtype=torch.int64, device="cuda")
    ext = torch.ones(bs, dtype=torch.int32, device="cuda") if mode == 2 else None
    dests = [_graph_destination(rows, bs, width + n) for _ in range(3)]
    targets = nsa.MetadataTargets(dests)
    kw = dict(mode=mode, draft_tokens=n, topk=topk, extend_lens=ext)
    nsa.build_metadata(targets, seq_lens, rpi, req_to_token, **kw)  # warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        nsa.build_metadata(targets, seq_lens, rpi, req_to_token, **kw)
    for it in range(5):
        max_len = width - (n if mode == 1 else 0)
        seq_lens.copy_(torch.randint(1, max_len + 1, (bs,), generator=gen))
        rpi.copy_(torch.randperm(pool_rows, generator=gen)[:bs])
        if ext is not None:
            ext.copy_(torch.randint(0, n + 1, (bs,), generator=gen).to(torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        fields = ref.build_fields(mode, np_(seq_lens), np_(rpi), np_(req_to_token), draft_tokens=n,
                                  extend_lens=None if ext is None else np_(ext), topk=topk)
        r = fields["rows"]
        for d in dests:
            np.testing.assert_array_equal(np_(d["cache_seqlens"]), fields["cache_seqlens"])
            np.testing.assert_array_equal(np_(d["cu_seqlens_k"]), fields["cu_seqlens_k"])
            np.testing.assert_array_equal(np_(d["nsa_cache_seqlens"][:r]), fields["nsa_cache_seqlens"])
            np.testing.assert_array_equal(np_(d["nsa_cu_seqlens_k"][:r + 1]), fields["nsa_cu_seqlens_k"])
            np.testing.assert_array_equal(np_(d["seqlens_expanded"][:r]), fields["seqlens_expanded"])
            pt, real = np_(d["page_table_1"]), np_(d["real_page_table"])
            for i, row in enumerate(fields["page_table_rows"]):
                np.testing.assert_array_equal(pt[i, :len(row)], row)
                np.testing.assert_array_equal(real[i, :len(fields["real_page_table_rows"][i])],
                                              fields["real_page_table_rows"][i])


# ---------------------------------------------------------------- compat on CUDA, against torch re-statements

@cuda_only
def test_compat_index_buffer_cuda(gen):
    buf = random_cache(gen, 8, "cuda")
    pages = torch.tensor([[3, 1], [0, 7]], dtype=torch.int32, device="cuda")
    lens = torch.tensor([100, 64], dtype=torch.int64, device="cuda")
    k, s = sglang.get_k_and_s(POOL, buf, pages, lens, 164, 100)
    flat = buf.view(-1)

    def restated(seq_len, page_row):  # upstream's torch_fast indexing, restated
        t = torch.arange(seq_len, device="cuda")
        base = page_row[t // 64].long() * 8448
        k_idx = (base + (t % 64) * 128)[:, None] + torch.arange(128, device="cuda")
        s_idx = (base + 8192 + (t % 64) * 4)[:, None] + torch.arange(4, device="cuda")
        return flat[k_idx], flat[s_idx]

    ek = torch.cat([restated(100, pages[0])[0], restated(64, pages[1])[0]])
    es = torch.cat([restated(100, pages[0])[1], restated(64, pages[1])[1]])
    assert torch.equal(k, ek) and torch.equal(s, es) and s.dtype == torch.uint8
    assert torch.equal(sglang.get_k(POOL, buf, 100, pages[0]), restated(100, pages[0])[0])
    assert torch.equal(sglang.get_s(POOL, buf, 100, pages[0]), restated(100, pages[0])[1])
    if hasattr(torch, "float8_e4m3fn"):
        loc = torch.tensor([5, 130, 511], dtype=torch.int64, device="cuda")
        index_k = torch.randint(0, 256, (3, 128), dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
        scale = torch.rand(3, 1, device="cuda")
        sglang.set_k_and_s(POOL, buf, loc, index_k, scale)
        k2 = sglang.get_k(POOL, buf, 512, torch.arange(8, dtype=torch.int32, device="cuda"))
        s2 = sglang.get_s(POOL, buf, 512, torch.arange(8, dtype=torch.int32, device="cuda"))
        assert torch.equal(k2[loc], index_k.view(torch.uint8))
        assert torch.equal(s2[loc].view(torch.float32).view(-1), scale.view(-1))


@cuda_only
def test_compat_fused_metadata_copy_cuda():
    bs, max_len = 8, 128
    g = torch.Generator(device="cuda").manual_seed(3)
    ri = lambda hi, *s: torch.randint(0, hi, s, dtype=torch.int32, device="cuda", generator=g)  # noqa: E731
    src = [ri(128, bs), ri(10_000, bs + 1), ri(1000, bs, 128), ri(256, bs), None, ri(10_000, bs + 1), ri(1000, bs, 64),
           ri(100, bs + 1), ri(100, 128)]

    def dst():
        z = lambda *s: torch.zeros(s, dtype=torch.int32, device="cuda")  # noqa: E731
        return [z(bs), z(bs + 1), z(bs, max_len + 16), z(bs), None, z(bs + 1), z(bs, 72), z(bs + 1), z(128)]

    d = dst()
    sglang.fused_metadata_copy_cuda(*src, *d, 0, bs, max_len, 256, bs)
    e = dst()  # upstream's python reference chain, restated
    e[0].copy_(src[0]); e[1][1:].copy_(src[1][1:]); e[2][:, :max_len].copy_(src[2][:, :max_len])  # noqa: E702
    e[3].copy_(src[3]); e[5][1:].copy_(src[5][1:]); e[6][:, :64].copy_(src[6])  # noqa: E702
    e[7].copy_(src[7]); e[8].copy_(src[8])  # noqa: E702
    torch.cuda.synchronize()
    for a, b in zip(d, e):
        if a is not None:
            assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="must have dtype int32"):
        sglang.fused_metadata_copy_cuda(src[0].long(), *src[1:], *d, 0, bs, max_len, 256, bs)
    multi_src = [src[i] for i in (0, 1, 2, 3, 5, 6, 7, 8)]
    dsts = [dst() for _ in range(3)]
    args = list(multi_src)
    for x in dsts:
        args += [x[i] for i in (0, 1, 2, 3, 5, 6, 7, 8)]
    sglang.fused_metadata_copy_multi_cuda(*args, bs, max_len, bs)
    torch.cuda.synchronize()
    for x in dsts:
        for a, b in zip(x, e):
            if a is not None:
                assert torch.equal(a, b)


@cuda_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_a_non_current_device(gen):
    cache = random_cache(gen, 2, "cuda:1")
    pages = torch.tensor([1], dtype=torch.int32, device="cuda:1")
    assert torch.cuda.current_device() == 0
    k = nsa.gather_k(cache, 64, pages)
    assert k.device == cache.device and torch.cuda.current_device() == 0
    assert torch.equal(k, cache[1, :8192].view(64, 128))
