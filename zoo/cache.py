"""Where derived files are cached on this machine (block profiles, TensorRT engines).

A module of its own because both the profiler and the backends need it, and the profiler
depends on the backends: the cache location must sit below both.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$P2PINFER_CACHE_DIR``, else ``~/.cache/p2pinfer``."""
    return Path(os.environ.get("P2PINFER_CACHE_DIR", Path.home() / ".cache" / "p2pinfer"))
