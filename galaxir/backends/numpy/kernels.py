"""The numpy kernels moved to galaxir/reference/kernels (below the passes); this module keeps
``galaxir.backends.numpy.kernels.<family>`` importing the same modules (no second copy)."""
import sys

from ...reference import kernels as _kernels

for _name, _mod in list(sys.modules.items()):
    if _name.startswith(_kernels.__name__ + "."):
        sys.modules[__name__ + _name[len(_kernels.__name__):]] = _mod
        globals()[_name[len(_kernels.__name__) + 1:]] = _mod
