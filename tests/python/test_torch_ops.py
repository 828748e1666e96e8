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
    pytest.skip("torch not installed (NSA_TORCH=1 scripts/run.sh test installs it into .venv)", allow_module_level=True)

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
                 "build_metadata", "copy_metadata"):
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


@pytest.mark.skipif(not nsa.has_metadata, reason="this build has no metadata ops")
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
