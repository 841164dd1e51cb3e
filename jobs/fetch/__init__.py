"""The weight fetcher: parallel, resumable, verified downloads onto the shared volume."""

from .fetch import Options, fetch

__all__ = ["Options", "fetch"]
