"""KV cache of the gpt-oss inference loop: one K and one V buffer per layer, for a batch of sequences.

Legend: L layers, B sequences, S cache capacity in tokens, Hkv KV heads, D head dim.
"""

from __future__ import annotations

import torch

from autotune.model.config import ModelConfig


class KVCache:
    """Per-layer K/V buffers ``[B, S, Hkv, D]`` plus the fill level of each sequence.

    The buffers are allocated once (CUDA graphs replay on fixed addresses). ``lens`` lives on the device so a
    captured decode step can read and advance it; ``host_lens`` mirrors it on the host for bounds checks and table
    lookups without a device sync.

    Attributes:
        k, v: lists of L tensors ``[B, S, Hkv, D]`` of ``dtype`` (the activation dtype, or float8_e4m3fn).
        lens: int32 ``[B]``: valid positions per sequence.
        host_lens: the same, as a Python list.
        capacity: S.
    """

    def __init__(self, config: ModelConfig, batch: int, capacity: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        if batch < 1 or capacity < 1:
            raise ValueError(f"KV cache needs batch >= 1 and capacity >= 1, got {batch} and {capacity}")
        shape = (batch, capacity, config.num_key_value_heads, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.lens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.host_lens = [0] * batch
        self.capacity = capacity
        self.dtype = dtype

    @property
    def batch(self) -> int:
        """B, the number of sequences."""
        return len(self.host_lens)

    def bytes(self) -> int:
        """Bytes held by the K and V buffers."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def reset(self) -> None:
        """Forget every sequence (the buffers keep their memory and addresses)."""
        self.lens.zero_()
        self.host_lens = [0] * self.batch

    def check_room(self, sequence: int | None, new_tokens: int) -> None:
        """Raise ValueError when ``new_tokens`` more positions do not fit (one sequence, or all when None)."""
        rows = range(self.batch) if sequence is None else [sequence]
        for row in rows:
            if self.host_lens[row] + new_tokens > self.capacity:
                raise ValueError(f"sequence {row}: {self.host_lens[row]} + {new_tokens} tokens exceed the KV cache "
                                 f"capacity {self.capacity} (raise --max-len)")
