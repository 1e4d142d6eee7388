"""Triton kernels for gpt-oss inference, each beside its fp32 torch reference and cost model.

This package depends on torch and triton only (never on :mod:`autotune`), so a runtime can import a kernel
without the tuner.
"""
