"""Token generation with the built-in gpt-oss loop: prefill the prompts, then decode one token per step, under CUDA
graphs on a GPU (one graph per distinct set of kernel configs; the context-length bucket of the attention config
is what changes during a generation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from autotune.model.kv_cache import KVCache
from autotune.model.kernel_configs import StepConfigs
from autotune.model.model import GptOss
from autotune.model.sampling import select_next


class DecodeRunner:
    """Runs :meth:`GptOss.decode` steps on a cache, replaying a captured CUDA graph when ``cuda_graphs`` is set.

    The first step with a new :class:`StepConfigs` runs eagerly (which also compiles its Triton kernels), then the
    step is captured; later steps with that key replay the graph. ``tokens`` is the graph's fixed input buffer.

    Args:
        model: the model.
        cache: the KV cache the steps append to.
        cuda_graphs: capture and replay (CUDA devices only).
    """

    def __init__(self, model: GptOss, cache: KVCache, *, cuda_graphs: bool) -> None:
        self.model = model
        self.cache = cache
        self.cuda_graphs = cuda_graphs and model.device.type == "cuda"
        self.tokens = torch.zeros(cache.batch, dtype=torch.int64, device=model.device)  # [B]
        self._graphs: dict[StepConfigs, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    @property
    def graphs_captured(self) -> int:
        """Number of CUDA graphs captured so far."""
        return len(self._graphs)

    def step(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Decode one token per sequence.

        Args:
            tokens: int64 ``[B]`` to feed (copied into :attr:`tokens`); None feeds what :attr:`tokens` holds.

        Returns:
            float32 logits ``[B, V]`` (with graphs: the graph's output buffer, overwritten by the next step).

        Raises:
            ValueError: a sequence has no room left in the cache.
        """
        self.cache.check_room(None, 1)
        if tokens is not None:
            self.tokens.copy_(tokens)
        key = self.model.decode_step_configs(self.cache)
        captured = self._graphs.get(key)
        if captured is not None:
            captured[0].replay()
            logits = captured[1]
        else:
            logits = self.model.decode(self.tokens, self.cache, key)
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    static_logits = self.model.decode(self.tokens, self.cache, key)
                self._graphs[key] = (graph, static_logits)
        self.cache.host_lens = [n + 1 for n in self.cache.host_lens]
        return logits


@dataclass
class Generation:
    """What :func:`generate` produced, with its timings.

    Attributes:
        prompt_ids: the prompts' token ids.
        generated_ids: the new token ids per sequence (stops after a stop id, which is kept).
        prefill_s: wall time of the prefill, including the first token's selection (TTFT), seconds.
        decode_s: wall time of all decode steps, seconds.
        decode_steps: decode steps run.
        graphs_captured: CUDA graphs captured.
    """

    prompt_ids: list[list[int]]
    generated_ids: list[list[int]] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    graphs_captured: int = 0


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only; CPU work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(model: GptOss, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, stop_ids: tuple[int, ...] = (),
             cuda_graphs: bool = True) -> Generation:
    """Generate up to ``max_new_tokens`` for each prompt (a batch; prompts may differ in length).

    Args:
        model: the model.
        prompts: token ids per sequence, each non-empty and < vocab size.
        max_new_tokens: tokens to generate per sequence (≥ 1).
        temperature, top_p: sampling (see :func:`autotune.model.sampling.select_next`); 0 = greedy.
        seed: seeds the sampler.
        stop_ids: a sequence ends after producing one of these ids (the batch runs until all ended).
        cuda_graphs: replay decode steps as CUDA graphs on a GPU.

    Returns:
        The :class:`Generation`.

    Raises:
        ValueError: empty prompts, token ids out of range, max_new_tokens < 1, bad sampling parameters.
    """
    vocab = model.config.vocab_size
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise ValueError(f"prompt token ids must be in 0..{vocab - 1}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = model.device
    batch = len(prompts)
    capacity = max(len(p) for p in prompts) + max_new_tokens
    cache = model.new_cache(batch, capacity)
    generator = None
    if seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    result = Generation(prompt_ids=[list(p) for p in prompts], generated_ids=[[] for _ in prompts])

    sync_device(device)
    start = time.perf_counter()
    last_logits = []
    by_length: dict[int, list[int]] = {}
    for row, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(row)
    for rows in by_length.values():
        for first, count in _runs(rows):
            ids = torch.tensor(prompts[first:first + count], dtype=torch.int64, device=device)  # [B', T]
            last_logits.append((first, model.prefill(ids, cache, rows=slice(first, first + count))))
    logits = torch.empty(batch, vocab, dtype=torch.float32, device=device)
    for first, part in last_logits:
        logits[first:first + part.shape[0]] = part
    next_ids = select_next(logits, temperature=temperature, top_p=top_p, generator=generator)  # [B]
    host_ids = next_ids.tolist()
    result.prefill_s = time.perf_counter() - start

    done = [False] * batch
    runner = DecodeRunner(model, cache, cuda_graphs=cuda_graphs)
    start = time.perf_counter()
    for step in range(max_new_tokens):
        for row, token in enumerate(host_ids):
            if not done[row]:
                result.generated_ids[row].append(token)
                done[row] = token in stop_ids
        if all(done) or step == max_new_tokens - 1:
            break
        logits = runner.step(next_ids)
        next_ids = select_next(logits, temperature=temperature, top_p=top_p, generator=generator)
        host_ids = next_ids.tolist()
        result.decode_steps += 1
    sync_device(device)
    result.decode_s = time.perf_counter() - start
    result.graphs_captured = runner.graphs_captured
    return result


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Split sorted row indices into (first, count) runs of consecutive rows (one prefill call each)."""
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and runs[-1][0] + runs[-1][1] == row:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((row, 1))
    return runs
