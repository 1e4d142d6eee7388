"""A planned Triton launch, separate from running it, so that one plan can be launched, compiled ahead into Triton's
cache (``compile_only``), or compiled offline for another GPU (``autotune.offline``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KernelLaunch:
    """One Triton launch: ``kernel[grid](*args, **kwargs)``; kwargs hold the constexprs and num_warps/num_stages."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict

    def run(self, *, compile_only: bool = False) -> Any:
        """Launch, or with ``compile_only`` compile into Triton's cache without running (GPU only).

        Returns:
            What Triton returns: the compiled kernel (metadata such as ``shared`` bytes), or None in the interpreter.
        """
        if compile_only:
            return self.kernel.warmup(*self.args, grid=self.grid, **self.kwargs)
        return self.kernel[self.grid](*self.args, **self.kwargs)
