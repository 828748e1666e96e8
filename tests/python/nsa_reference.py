"""Numpy re-statements of the specs, written for clarity, not speed: the
oracle the Python tests compare nsa against (indexer-cache.md §2-§4,
metadata.md §3-§6). Independent of the C++ reference on purpose.
"""

import numpy as np

PAGE = 64
HEAD = 128
PAGE_BYTES = PAGE * (HEAD + 4)  # 8448
K_BYTES = PAGE * HEAD           # 8192


def k_offset(slot, page=PAGE):
    """A page of `page` tokens: page * 128 K bytes, then page * 4 scale bytes."""
    return (slot // page) * page * (HEAD + 4) + (slot % page) * HEAD


def s_offset(slot, page=PAGE):
    return (slot // page) * page * (HEAD + 4) + page * HEAD + (slot % page) * 4


# ---------------------------------------------------------------- fp8 e4m3fn

def _e4m3_table():
    values = []
    for code in range(0x7F):  # 0x00 .. 0x7E: every finite non-negative code
        e, m = code >> 3, code & 7
        values.append(m * 2.0 ** -9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return np.array(values, dtype=np.float64)


E4M3 = _e4m3_table()  # increasing, E4M3[126] = 448


def float_to_e4m3(x):
    """Round to nearest e4m3fn code, ties to the even code, saturating at 448; NaN -> 0x7F | sign."""
    x = np.asarray(x, dtype=np.float32)
    a = np.minimum(np.abs(x).astype(np.float64), 448.0)
    hi = np.clip(np.searchsorted(E4M3, a), 0, 126)  # first value >= a
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - E4M3[lo], E4M3[hi] - a
    code = np.where(d_hi < d_lo, hi, np.where(d_lo < d_hi, lo, np.where(hi % 2 == 0, hi, lo)))
    code = np.where(np.isnan(x), 0x7F, code).astype(np.uint8)
    return code | (np.signbit(x).astype(np.uint8) << 7)


def bf16_bits_to_float(bits):
    return (np.asarray(bits).astype(np.uint16).astype(np.uint32) << 16).view(np.float32)


def quant_scale(amax, mode):
    s = np.float32(max(np.float32(amax), np.float32(1e-4))) / np.float32(448.0)
    if mode == "ue8m0":
        bits = np.array([s], dtype=np.float32).view(np.uint32)[0]
        if bits & 0x7FFFFF:
            bits = np.uint32(((int(bits) >> 23) + 1) << 23)
        s = np.array([bits], dtype=np.uint32).view(np.float32)[0]
    return np.float32(s)


def quantize_row(x, mode, formula="multiply"):
    x = np.asarray(x, dtype=np.float32)
    finite = x[np.isfinite(x)]
    amax = np.max(np.abs(finite)) if finite.size else np.float32(0)
    s = quant_scale(amax, mode)
    q = x * (np.float32(1.0) / s) if (mode == "fp32" and formula == "multiply") else x / s
    return float_to_e4m3(np.clip(q, -448.0, 448.0).astype(np.float32)), s


# ---------------------------------------------------------------- index cache ops (flat uint8 cache)

def quantize_and_store_k(cache, k, slots, mode, page=PAGE, formula="multiply"):
    """k: bf16 as raw uint16 bits, float16 or float32."""
    flat = cache.reshape(-1)
    for t, slot in enumerate(slots):
        if slot < 0:
            continue
        row = bf16_bits_to_float(k[t]) if k.dtype == np.uint16 else k[t].astype(np.float32)
        q, s = quantize_row(row, mode, formula)
        flat[k_offset(slot, page):k_offset(slot, page) + HEAD] = q
        flat[s_offset(slot, page):s_offset(slot, page) + 4] = np.array([s], dtype=np.float32).view(np.uint8)


def store_k_and_s(cache, k, scale, slots, page=PAGE):
    flat = cache.reshape(-1)
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    for t, slot in enumerate(slots):
        if slot < 0:
            continue
        flat[k_offset(slot, page):k_offset(slot, page) + HEAD] = k[t]
        flat[s_offset(slot, page):s_offset(slot, page) + 4] = scale[t:t + 1].view(np.uint8)


def token_k(cache, page_id, offset, page=PAGE):
    flat = cache.reshape(-1)
    start = k_offset(int(page_id) * page + offset, page)
    return flat[start:start + HEAD]


def token_s_bytes(cache, page_id, offset, page=PAGE):
    flat = cache.reshape(-1)
    start = s_offset(int(page_id) * page + offset, page)
    return flat[start:start + 4]


def gather_k(cache, length, page_ids, page=PAGE):
    out = np.empty((length, HEAD), np.uint8)
    for t in range(length):
        out[t] = token_k(cache, page_ids[t // page], t % page, page)
    return out


def gather_s(cache, length, page_ids, page=PAGE):
    out = np.empty((length, 4), np.uint8)
    for t in range(length):
        out[t] = token_s_bytes(cache, page_ids[t // page], t % page, page)
    return out.view(np.float32).reshape(length)


def gather_k_and_s(cache, page_table, lengths, page=PAGE):
    ks, ss = [], []
    for b, length in enumerate(lengths):
        ks.append(gather_k(cache, int(length), page_table[b], page))
        ss.append(gather_s(cache, int(length), page_table[b], page))
    return np.concatenate(ks or [np.empty((0, HEAD), np.uint8)]), np.concatenate(ss or [np.empty(0, np.float32)])


# ---------------------------------------------------------------- metadata (metadata.md §3-§4)

def cu(x):
    return np.concatenate([[0], np.cumsum(np.asarray(x, dtype=np.int64))]).astype(np.int32)


def expand(qo, kv):
    return np.array([kv_b - qo_b + 1 + j for qo_b, kv_b in zip(qo, kv) for j in range(qo_b)], dtype=np.int32)


def build_fields(mode, seq_lens, req_pool_indices, req_to_token, draft_tokens=1, extend_lens=None, topk=2048,
                 page_size=64):
    """Every field of one build as numpy arrays plus, per row, the number of
    defined page-table columns (a row's own KV length: metadata.md §5.6)."""
    seq_lens = np.asarray(seq_lens, dtype=np.int64)
    bs = len(seq_lens)
    draft = draft_tokens if mode == 1 else 0
    cache_seqlens = (seq_lens + draft).astype(np.int32)
    if mode == 0:
        qo = np.ones(bs, dtype=np.int64)
    elif mode == 1:
        qo = np.full(bs, draft_tokens, dtype=np.int64)
    else:
        qo = np.asarray(extend_lens, dtype=np.int64)
    expanded = expand(qo, cache_seqlens)
    owner = np.repeat(np.arange(bs), qo)  # request of each query row
    rows = []
    for r, b in enumerate(owner):
        rows.append(req_to_token[req_pool_indices[b], :cache_seqlens[b]].astype(np.int32))
    real_rows = [row[::page_size] // page_size for row in rows]
    nsa_cache = np.minimum(expanded, topk).astype(np.int32)
    return {
        "cache_seqlens": cache_seqlens,
        "cu_seqlens_k": cu(cache_seqlens),
        "seqlens_expanded": expanded,
        "nsa_cache_seqlens": nsa_cache,
        "nsa_cu_seqlens_k": cu(nsa_cache),
        "page_table_rows": rows,
        "real_page_table_rows": real_rows,
        "rows": len(owner),
    }


def paged_mqa_schedule(lens, next_n, num_sms, g1=False, clamp_min_len=False):
    """DeepGEMM's paged-MQA schedule (metadata.md §10) in numpy: int32
    [num_sms + 1, 2] from the per-request lengths."""
    lens = np.asarray(lens, np.int64)
    if clamp_min_len:
        lens = np.maximum(lens, 1)
    u = -(-np.maximum(lens, 0) // 256)                                  # units per request
    atoms = 1 if g1 or next_n < 2 else -(-next_n // 2)                  # next_n atoms
    U = np.cumsum(u) * atoms                                            # inclusive prefix, in atom units
    B, S = len(lens), num_sms
    T = int(U[-1]) if B else 0
    q, r = divmod(T, S)
    i = np.arange(S + 1)
    start = i * q + (np.minimum(i, r) if g1 else np.maximum(0, i - (S - r)))
    b = np.searchsorted(U, start, side="right")                         # first request with U_b > start
    before = np.where(b > 0, U[np.maximum(b - 1, 0)] if B else 0, 0)
    off = start - before
    ub = np.where(b < B, u[np.minimum(b, max(B - 1, 0))] if B else 1, 1)
    out = np.stack([b * atoms + off // ub, off % ub], axis=1)
    past = b >= B                                                       # sentinel and SMs past every unit
    out[past] = [B * atoms, 0]
    return out.astype(np.int32)
