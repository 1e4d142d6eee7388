"""Next-token selection: greedy, or temperature + nucleus (top-p) sampling (Holtzman et al. 2019, "The Curious Case
of Neural Text Degeneration", arXiv:1904.09751)."""

from __future__ import annotations

import torch


def select_next(logits: torch.Tensor, *, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row.

    Args:
        logits: float32 ``[B, V]``.
        temperature: 0 for greedy (argmax, ties to the lowest id); > 0 divides the logits before the softmax.
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p`` (1.0 keeps all).
        generator: the random source for sampling (seeded by ``--seed``).

    Returns:
        int64 ``[B]`` on the logits' device.

    Raises:
        ValueError: temperature < 0 or top_p outside (0, 1].
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)           # [B, V]
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs                    # mass of the tokens ranked above
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)      # the top token always survives
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    draws = torch.multinomial(probs.cpu() if generator is not None and generator.device.type == "cpu" else probs,
                              1, generator=generator)
    return draws.squeeze(-1).to(logits.device)
