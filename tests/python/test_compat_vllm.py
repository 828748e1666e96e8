"""nsa.compat.vllm against a plain numpy re-statement of vLLM's CUDA kernels
(indexer_k_quant_and_cache, cp_gather_indexer_k_quant_cache) on vLLM's cache
tensor [num_blocks, block_size, 132], bit-exact, whole buffers compared. Runs
on numpy arrays, and on torch CPU tensors when torch is installed."""

import inspect

import numpy as np
import pytest

import nsa
from nsa.compat import vllm
from nsa_reference import float_to_e4m3
from conftest import FRAMEWORKS, captured, cuda_torch, needs_cuda, to_fw, to_np

TOKEN = 132
BLOCK_SIZES = [16, 32, 64, 128, 256]


# ---------------------------------------------------------------- vLLM's kernels, restated

def k_as_float(k):
    k = np.asarray(k)
    if k.dtype == np.uint16:  # bf16 bits
        return (k.astype(np.uint32) << 16).view(np.float32)
    return k.astype(np.float32)


def vllm_scale(amax, ue8m0):
    s = np.float32(max(np.float32(amax), np.float32(1e-4))) / np.float32(448.0)
    if ue8m0:
        s = np.exp2(np.ceil(np.log2(s, dtype=np.float32)), dtype=np.float32)
    return np.float32(s)


def vllm_quant_and_cache(cache, k, slot_mapping, ue8m0):
    """indexer_k_quant_and_cache: per token amax over 128 elements, plain
    scale max(amax, 1e-4) / 448 (ue8m0: exp2f(ceilf(log2f(s)))), K byte =
    e4m3 saturating of x / s, at block*bs*132 + off*128; scale at
    block*bs*132 + bs*128 + off*4."""
    bs = cache.shape[1]
    flat = cache.reshape(-1)
    x = k_as_float(k)
    for t in range(x.shape[0]):
        slot = int(slot_mapping[t])
        if slot < 0:
            continue
        s = vllm_scale(np.max(np.abs(x[t])), ue8m0)
        q = float_to_e4m3(np.clip(x[t] / s, -448, 448).astype(np.float32))
        base = (slot // bs) * bs * TOKEN
        off = slot % bs
        flat[base + off * 128:base + off * 128 + 128] = q
        flat[base + bs * 128 + off * 4:base + bs * 128 + off * 4 + 4] = np.array([s], np.float32).view(np.uint8)


def vllm_gather(cache, dst_k, dst_scale, block_table, cu_seq_lens):
    """cp_gather_indexer_k_quant_cache: row t < dst_k rows in [cu[b], cu[b+1])
    gets token t - cu[b] of request b; rows in no request are not written."""
    bs = cache.shape[1]
    flat = cache.reshape(-1)
    for t in range(dst_k.shape[0]):
        owners = [b for b in range(block_table.shape[0]) if cu_seq_lens[b] <= t < cu_seq_lens[b + 1]]
        if not owners:
            continue
        b = owners[-1]
        i = t - cu_seq_lens[b]
        base = int(block_table[b, i // bs]) * bs * TOKEN
        off = i % bs
        dst_k[t] = flat[base + off * 128:base + off * 128 + 128]
        dst_scale[t] = flat[base + bs * 128 + off * 4:base + bs * 128 + off * 4 + 4]


# ---------------------------------------------------------------- inputs

def random_k(rng, n, dtype, cols=128):
    x = rng.standard_normal((n, cols)).astype(np.float32) * np.exp2(rng.uniform(-10, 10, size=(n, 1)))
    x = x.astype(np.float32)
    if dtype == "bfloat16":
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    if dtype == "float16":
        return np.clip(x, -60000, 60000).astype(np.float16)
    return x


def random_vllm_cache(rng, blocks, bs):
    return rng.integers(0, 256, size=(blocks, bs, TOKEN), dtype=np.uint8)


def test_signatures_match_vllm():
    names = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert names(vllm.indexer_k_quant_and_cache) == ["k", "kv_cache", "slot_mapping", "quant_block_size",
                                                     "kv_cache_dtype"]
    assert names(vllm.cp_gather_indexer_k_quant_cache) == ["kv_cache", "dst_k", "dst_scale", "block_table",
                                                           "cu_seq_lens"]


# ---------------------------------------------------------------- store

@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("scale_fmt", ["ue8m0", "", "fp8_e4m3"])
@pytest.mark.parametrize("k_dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_indexer_k_quant_and_cache(rng, fw, block_size, k_dtype, scale_fmt):
    blocks = 5
    cache = random_vllm_cache(rng, blocks, block_size)
    expected = cache.copy()
    n = 2 * block_size + 3
    k = random_k(rng, n, k_dtype)
    k[1] = 0                                                     # all-zero token: scale 1e-4 / 448
    slots = np.full(n + 5, 10**9, np.int64)                      # entries past num_tokens are never read
    slots[:n] = rng.permutation(blocks * block_size)[:n]
    slots[:n:7] = -1                                             # padded tokens
    slots[2] = blocks * block_size - 1                           # last slot of the last block
    kv = to_fw(fw, cache)
    assert vllm.indexer_k_quant_and_cache(to_fw(fw, k), kv, to_fw(fw, slots), 128, scale_fmt) is None
    vllm_quant_and_cache(expected, k, slots, scale_fmt == "ue8m0")
    np.testing.assert_array_equal(to_np(kv), expected)


def test_plain_scale_divides_like_vllm(rng):
    """vLLM's kernel stores e4m3(x / s); SGLang's store e4m3(x * (1/s)). Rows
    where the two differ must get vLLM's byte."""
    bits = random_k(rng, 4096, "bfloat16")  # bf16 K: quotients land exactly on e4m3 midpoints often
    x = k_as_float(bits)
    s = np.maximum(np.abs(x).max(axis=1), np.float32(1e-4)).astype(np.float32) / np.float32(448)
    divide = float_to_e4m3(np.clip(x / s[:, None], -448, 448).astype(np.float32))
    multiply = float_to_e4m3(np.clip(x * (np.float32(1) / s)[:, None], -448, 448).astype(np.float32))
    rows = np.nonzero((divide != multiply).any(axis=1))[0][:64]
    assert rows.size > 0, "no tie found; enlarge the sample"
    cache = np.zeros((len(rows), 64, TOKEN), np.uint8)
    vllm.indexer_k_quant_and_cache(bits[rows], cache, np.arange(len(rows), dtype=np.int64) * 64, 128, "")
    got = cache[:, 0, :128]  # token 0 of each block
    np.testing.assert_array_equal(got, divide[rows])
    assert (got != multiply[rows]).any()


@pytest.mark.parametrize("k_dtype", ["bfloat16", "float16"])
def test_ue8m0_matches_log2_rounding_for_every_16_bit_amax(rng, k_dtype):
    """vLLM rounds the scale with exp2f(ceilf(log2f(s))), nsa on the bits: for
    every finite positive bf16 / fp16 amax the two give the same scale, and
    tokens whose amax is each such value get vLLM's bytes."""
    if k_dtype == "bfloat16":
        bits = np.arange(1, 0x7F80, dtype=np.uint32)
        amax = (bits << 16).view(np.float32)
    else:
        amax = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    s = np.maximum(amax, np.float32(1e-4)).astype(np.float32) / np.float32(448)
    by_log2 = np.exp2(np.ceil(np.log2(s, dtype=np.float32)), dtype=np.float32)
    sb = s.view(np.uint32)
    by_bits = np.where(sb & 0x7FFFFF, ((sb >> 23) + 1) << 23, sb).astype(np.uint32).view(np.float32)
    np.testing.assert_array_equal(by_log2, by_bits)
    # through the op: one token per amax value near powers of two (every 64th value, and all of the first 512)
    pick = np.unique(np.concatenate([np.arange(512), np.arange(0, amax.size, 64)]))
    pick = pick[np.isfinite(amax[pick]) & (amax[pick] < 60000)]
    k = random_k(rng, pick.size, "float32")
    k = k / np.abs(k).max(axis=1, keepdims=True) * amax[pick, None] * 0.5
    k[:, 0] = amax[pick]
    k = (k.view(np.uint32) >> 16 << 16).view(np.float32) if k_dtype == "bfloat16" else k.astype(np.float16)
    k_arg = (k.view(np.uint32) >> 16).astype(np.uint16) if k_dtype == "bfloat16" else k
    blocks = -(-pick.size // 64)
    cache, expected = np.zeros((blocks, 64, TOKEN), np.uint8), np.zeros((blocks, 64, TOKEN), np.uint8)
    slots = np.arange(pick.size, dtype=np.int64)
    vllm.indexer_k_quant_and_cache(k_arg, cache, slots, 128, "ue8m0")
    vllm_quant_and_cache(expected, k_arg, slots, True)
    np.testing.assert_array_equal(cache, expected)


def test_k_is_read_as_contiguous_rows_like_vllm(rng):
    """vLLM reads k[t * 128 + d] from k's first element; a numpy view with a
    row stride cannot be read so and is refused before anything is written."""
    cache = random_vllm_cache(rng, 2, 16)
    before = cache.copy()
    wide = random_k(rng, 4, "float32", cols=160)
    with pytest.raises(RuntimeError, match="contiguous") as info:
        vllm.indexer_k_quant_and_cache(wide[:, :128], cache, np.arange(4, dtype=np.int64), 128, "ue8m0")
    assert isinstance(info.value, nsa.NsaError)
    np.testing.assert_array_equal(cache, before)


# ---------------------------------------------------------------- gather

@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_cp_gather_indexer_k_quant_cache(rng, fw, block_size):
    blocks = 12
    cache = random_vllm_cache(rng, blocks, block_size)
    lens = np.array([block_size + 1, 0, 1, 3 * block_size, block_size - 1, block_size], np.int64)
    max_blocks = int(-(-lens.max() // block_size)) + 1
    table = rng.integers(0, blocks, size=(len(lens), max_blocks)).astype(np.int32)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    total = int(cu[-1])
    rows = total + 9                                    # an allocation bound: rows past cu[-1] are untouched
    dst_k = rng.integers(0, 256, size=(rows, 128), dtype=np.uint8)
    dst_scale = rng.integers(0, 256, size=(rows, 4), dtype=np.uint8)
    expected_k, expected_s = dst_k.copy(), dst_scale.copy()
    args = [to_fw(fw, a) for a in (cache, dst_k, dst_scale, table, cu)]
    if fw == "torch":
        import torch
        args[1] = args[1].view(torch.float8_e4m3fn)     # vLLM's k_fp8 workspace
    assert vllm.cp_gather_indexer_k_quant_cache(*args) is None
    vllm_gather(cache, expected_k, expected_s, table, cu)
    np.testing.assert_array_equal(dst_k, expected_k)
    np.testing.assert_array_equal(dst_scale, expected_s)


def test_gather_chunk_views_like_vllm(rng):
    """vLLM passes k_quant_full[:total] / k_scale_full[:total] and a row slice
    of the block table per prefill chunk."""
    cache = random_vllm_cache(rng, 8, 64)
    table_full = rng.integers(0, 8, size=(6, 4)).astype(np.int32)
    lens = np.array([100, 64, 1], np.int64)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    k_full = np.zeros((400, 128), np.uint8)
    s_full = np.zeros((400, 4), np.uint8)
    total = int(cu[-1])
    vllm.cp_gather_indexer_k_quant_cache(cache, k_full[:total], s_full[:total], table_full[2:5], cu)
    ek, es = np.zeros((total, 128), np.uint8), np.zeros((total, 4), np.uint8)
    vllm_gather(cache, ek, es, table_full[2:5], cu)
    np.testing.assert_array_equal(k_full[:total], ek)
    np.testing.assert_array_equal(s_full[:total], es)
    assert not k_full[total:].any() and not s_full[total:].any()


@pytest.mark.parametrize("block_size", [16, 64])
def test_store_then_gather_round_trip(rng, block_size):
    blocks = 6
    cache = np.zeros((blocks, block_size, TOKEN), np.uint8)
    lens = np.array([block_size * 2 + 5, 7], np.int64)
    table = rng.permutation(blocks)[:6].reshape(2, 3).astype(np.int32)
    k = random_k(rng, int(lens.sum()), "bfloat16")
    slots = np.concatenate([table[b, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
                            for b, n in enumerate(lens)]).astype(np.int64)
    vllm.indexer_k_quant_and_cache(k, cache, slots, 128, "ue8m0")
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    dst_k = np.zeros((int(cu[-1]), 128), np.uint8)
    dst_s = np.zeros((int(cu[-1]), 4), np.uint8)
    vllm.cp_gather_indexer_k_quant_cache(cache, dst_k, dst_s, table, cu)
    expected = np.zeros_like(cache)
    vllm_quant_and_cache(expected, k, slots, True)
    ek, es = np.zeros_like(dst_k), np.zeros_like(dst_s)
    vllm_gather(expected, ek, es, table, cu)
    np.testing.assert_array_equal(dst_k, ek)
    np.testing.assert_array_equal(dst_s, es)


# ---------------------------------------------------------------- errors: RuntimeError, nothing written

@pytest.mark.parametrize("case", ["slot_dtype", "block_size", "token_bytes", "quant_block", "k_dtype", "k_cols",
                                  "short_slots"])
def test_store_errors(rng, case):
    cache = random_vllm_cache(rng, 3, 64)
    k = random_k(rng, 5, "bfloat16")
    slots = np.arange(5, dtype=np.int64)
    qb = 128
    if case == "slot_dtype":
        slots = slots.astype(np.int32)
    elif case == "block_size":
        cache = random_vllm_cache(rng, 3, 48)
    elif case == "token_bytes":
        cache = rng.integers(0, 256, size=(3, 64, 136), dtype=np.uint8)
    elif case == "quant_block":
        qb = 64
    elif case == "k_dtype":
        k = k.astype(np.int32)
    elif case == "k_cols":
        k = random_k(rng, 5, "bfloat16", cols=64)
    elif case == "short_slots":
        slots = slots[:4]
    before = cache.copy()
    with pytest.raises(RuntimeError) as info:
        vllm.indexer_k_quant_and_cache(k, cache, slots, qb, "ue8m0")
    assert isinstance(info.value, nsa.NsaError) and "argument" in str(info.value)
    np.testing.assert_array_equal(cache, before)


@pytest.mark.parametrize("case", ["table_dtype", "cu_dtype", "scale_cols", "scale_dtype", "scale_rows",
                                  "dst_cols", "table_rank"])
def test_gather_errors(rng, case):
    cache = random_vllm_cache(rng, 4, 64)
    table = np.array([[0, 1], [2, 3]], np.int32)
    cu = np.array([0, 70, 100], np.int32)
    dst_k = np.zeros((100, 128), np.uint8)
    dst_s = np.zeros((100, 4), np.uint8)
    if case == "table_dtype":
        table = table.astype(np.int64)
    elif case == "cu_dtype":
        cu = cu.astype(np.int64)
    elif case == "scale_cols":
        dst_s = np.zeros((100, 1), np.float32)
    elif case == "scale_dtype":
        dst_s = np.zeros((100, 4), np.int8)
    elif case == "scale_rows":
        dst_s = np.zeros((99, 4), np.uint8)
    elif case == "dst_cols":
        dst_k = np.zeros((100, 64), np.uint8)
    elif case == "table_rank":
        table = table.reshape(-1)
    with pytest.raises(RuntimeError) as info:
        vllm.cp_gather_indexer_k_quant_cache(cache, dst_k, dst_s, table, cu)
    assert isinstance(info.value, nsa.NsaError)
    assert not dst_k.any() and not np.asarray(dst_s).any()


# ---------------------------------------------------------------- CUDA: eager and CUDA-graph replay

@needs_cuda
@pytest.mark.parametrize("scale_fmt", ["ue8m0", ""])
@pytest.mark.parametrize("k_dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("block_size", [16, 64])
def test_cuda_store_and_gather_replayed_in_a_graph(rng, block_size, k_dtype, scale_fmt):
    """vLLM's decode path: both ops captured once, replayed with new K, slots
    and lengths written into the captured tensors."""
    torch = cuda_torch()
    blocks, n = 8, 2 * block_size + 5
    cache = random_vllm_cache(rng, blocks, block_size)
    dev_cache = torch.from_numpy(cache.copy()).cuda()
    dev_k = to_fw("torch", random_k(rng, n, k_dtype)).cuda()
    dev_slots = torch.zeros(n, dtype=torch.int64, device="cuda")
    lens = np.array([block_size + 3, 0, block_size + 2], np.int64)
    table = rng.permutation(blocks)[:6].reshape(3, 2).astype(np.int32)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    dev_table, dev_cu = torch.from_numpy(table).cuda(), torch.from_numpy(cu).cuda()
    dev_out_k = torch.full((n, 128), 0xA5, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    dev_out_s = torch.full((n, 4), 0xA5, dtype=torch.uint8, device="cuda")

    def step():
        vllm.indexer_k_quant_and_cache(dev_k, dev_cache, dev_slots, 128, scale_fmt)
        vllm.cp_gather_indexer_k_quant_cache(dev_cache, dev_out_k, dev_out_s, dev_table, dev_cu)

    graph = captured(torch, step)
    for _ in range(2):
        k = random_k(rng, n, k_dtype)
        slots = rng.permutation(blocks * block_size)[:n].astype(np.int64)
        slots[::9] = -1
        dev_k.copy_(to_fw("torch", k).cuda())
        dev_slots.copy_(torch.from_numpy(slots).cuda())
        before = dev_cache.cpu().numpy()
        out_k, out_s = dev_out_k.view(torch.uint8).cpu().numpy(), dev_out_s.cpu().numpy()
        graph.replay()
        torch.cuda.synchronize()
        vllm_quant_and_cache(before, k, slots, scale_fmt == "ue8m0")
        np.testing.assert_array_equal(dev_cache.cpu().numpy(), before)
        vllm_gather(before, out_k, out_s, table, cu)
        np.testing.assert_array_equal(dev_out_k.view(torch.uint8).cpu().numpy(), out_k)
        np.testing.assert_array_equal(dev_out_s.cpu().numpy(), out_s)
