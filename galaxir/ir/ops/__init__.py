"""The built-in op set, one module per family; importing this package registers them all.

Core ops are the small set every backend targets; composite ops (softmax, layer_norm,
gelu, ...) carry a ``decompose`` into core ops.
"""
import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "rules":
        importlib.import_module(f"{__name__}.{_info.name}")
