"""Text ↔ token ids through tiktoken's ``o200k_harmony`` encoding (gpt-oss's tokenizer), when it can be loaded.

tiktoken downloads the encoding file on first use (or reads its cache, ``TIKTOKEN_CACHE_DIR``); without either the
loop works on token ids only.
"""

from __future__ import annotations

import functools
from typing import Any

ENCODING = "o200k_harmony"


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> Any | None:
    """The tiktoken encoding, or None when tiktoken or the encoding file is unavailable (offline, not cached)."""
    try:
        import tiktoken

        return tiktoken.get_encoding(ENCODING)
    except Exception:  # noqa: BLE001 - any failure (no package, no network, unknown name) means "ids only"
        return None
