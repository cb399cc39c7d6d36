"""p2pinfer: collaborative DNN inference on edge networks."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what __getattr__ below hands out, for type checkers (the same import edge)
    from p2pinfer.client import AsyncClient, Client

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> object:
    """``from p2pinfer import Client`` without importing the client (aiohttp) on every
    ``import p2pinfer``: the node's worker processes and the zoo tools never need it."""
    if name in __all__:
        from p2pinfer import client

        return getattr(client, name)
    raise AttributeError(f"module 'p2pinfer' has no attribute {name!r}")
