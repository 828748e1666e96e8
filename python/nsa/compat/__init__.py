"""Drop-in replacements for other engines' kernel entry points: a call site
changes only its import.

``nsa.compat.sglang`` mirrors SGLang's NSA kernels (fused metadata copies,
index buffer accessors); ``nsa.compat.vllm`` mirrors vLLM's indexer-cache ops
(``indexer_k_quant_and_cache``, ``cp_gather_indexer_k_quant_cache``).
"""
