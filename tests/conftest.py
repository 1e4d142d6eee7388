"""Shared pytest setup.

Without a CUDA device the Triton kernels run on the CPU under Triton's interpreter, which must be chosen before
``triton`` is first imported (it is read when ``triton.jit`` wraps a function): this module is imported by pytest
before any test module, so it sets ``TRITON_INTERPRET=1`` here (``setdefault``: an explicit setting wins).
Tests marked ``gpu`` are skipped when there is no CUDA device.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none available)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
