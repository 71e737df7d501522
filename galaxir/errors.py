"""One exception hierarchy for everything galaxir reports to a user.

Every message names where the problem is (node/op and its position) and what was
expected, so the user can act on it without a traceback.
"""
from __future__ import annotations


class GalaxirError(Exception):
    """Base of every error galaxir raises on purpose."""


class ModelImportError(GalaxirError):
    """A model could not be imported (malformed file, checker failure, bad external data)."""


class UnsupportedOpError(GalaxirError):
    """An op (ONNX node or galaxir op) that this frontend or backend cannot handle."""


class VerificationError(GalaxirError):
    """The IR breaks an invariant: SSA dominance, types, region signatures, cycles."""


class ShapeInferenceError(VerificationError):
    """An op's operands do not fit its type rules (e.g. incompatible broadcast)."""


class ParseError(GalaxirError):
    """The textual IR could not be parsed; the message gives line and column."""


class CompileError(GalaxirError):
    """A backend failed to compile a module."""


class InputValidationError(GalaxirError):
    """Inputs given to an Executable do not match its signature (names, dtype, shape)."""


class ExecutionError(GalaxirError):
    """An op failed while running (e.g. an index out of range in the data)."""


class FormatError(GalaxirError):
    """A .gxm file is truncated, corrupted, hostile or from a newer format version."""


class PassError(GalaxirError):
    """A pass or rewrite failed or left the IR invalid."""


class OptionError(GalaxirError, ValueError):
    """A name given as an option does not exist: a compile option, a pass or rewrite rule
    to disable or print, a ``GALAXIR_PASSES`` item.  The message lists the valid names."""
