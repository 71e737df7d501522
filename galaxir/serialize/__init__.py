"""galaxir's own model file format, .gxm (FlatBuffers graph + aligned, memory-mapped weights)."""
from .gxm import FORMAT_VERSION, dumps, load, loads, save

__all__ = ["FORMAT_VERSION", "dumps", "load", "loads", "save"]
