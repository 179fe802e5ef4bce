"""Console scripts."""

__all__ = []
