"""Keep third-party noise out of what the command line and the demo print.

onnxruntime logs C++ warnings ("Removing initializer ...") on every session and torch emits
FutureWarnings on import; neither is about the user's model, and both bury galaxir's own
output.  galaxir itself issues no FutureWarning or DeprecationWarning, so those are silenced
wherever they come from (torch attributes its FutureWarnings to the stdlib's copyreg);
other warnings only when a third-party module raises them.
"""
from __future__ import annotations

import os
import warnings

THIRD_PARTY = r"(torch|onnxruntime|onnx|transformers|llvmlite|numba)(\.|$)"


def silence_third_party_warnings() -> None:
    """Ignore Python warnings raised from third-party modules; quiet onnxruntime's log."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for category in (UserWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    try:
        import onnxruntime as ort
    except ImportError:
        return
    ort.set_default_logger_severity(3)  # errors only


def ort_session(model_bytes: bytes, threads: int = 1):
    """An onnxruntime CPU session that logs only errors (``threads=0``: its default)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
