"""Drop-in replacements for other engines' kernel entry points.

``nsa.compat.sglang`` mirrors SGLang's NSA kernels: a call site changes only
its import.
"""
