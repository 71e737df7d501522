"""The 2-d sliding-window geometry the pooling and depthwise kernels share (MaxPool8,
Pool2d, DepthwiseNhwc, DepthwiseNchw): input and output sizes, kernel size, strides,
dilations and leading pads, and the index arithmetic derived from them.

The geometry stays a set of plain int fields of each kernel (a dataclass base, not a
nested object): the shape trace (shapetrace.flatten) takes a kernel's int fields from
``vars(kernel)``, and a nested object would be one opaque field compared whole, so every
shape would be a new kernel structure.  The helpers below are plain Python arithmetic on
those fields, so on a traced kernel they give traced numbers as the inline arithmetic did.
"""
from __future__ import annotations

from dataclasses import dataclass

from .codegen import i64


def interior_columns(OW: int, W: int, kw: int, sw: int, dw: int, pl: int) -> tuple[int, int]:
    """[lo, hi): the output columns whose every tap lies inside [0, W)."""
    lo = min(-(-pl // sw), OW)
    last = (kw - 1) * dw - pl          # iw of the last tap = ow*sw + last < W
    hi = min(OW, (W - 1 - last) // sw + 1) if W - 1 - last >= 0 else 0
    return lo, max(lo, hi)


@dataclass(kw_only=True)
class Window2d:
    """Output row ``oh``'s tap ``i`` reads input row ``oh * sh + i * dh - pt`` (columns
    alike); rows and columns outside the input are padding."""

    H: int
    W: int
    OH: int
    OW: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    dh: int = 1
    dw: int = 1
    pt: int = 0
    pl: int = 0

    def window_key(self) -> tuple:
        """The geometry fields in order, for the kernels' ``key``."""
        return (self.H, self.W, self.OH, self.OW, self.kh, self.kw, self.sh, self.sw,
                self.dh, self.dw, self.pt, self.pl)

    def rows_read(self, out_rows) -> int:
        """Input rows (padding included) that ``out_rows`` consecutive output rows read."""
        return (out_rows - 1) * self.sh + (self.kh - 1) * self.dh + 1

    def tap_cols(self, j) -> tuple[int, int]:
        """Output columns [lo, hi) whose tap-j input column lies in [0, W)."""
        off = j * self.dw - self.pl
        lo = max(0, -(-(-off) // self.sw)) if off < 0 else 0
        hi = min(self.OW, (self.W - 1 - off) // self.sw + 1) if self.W - 1 - off >= 0 else 0
        return lo, max(lo, hi)

    def interior_cols(self) -> tuple[int, int]:
        """Output columns [lo, hi) whose every tap lies inside [0, W)."""
        return interior_columns(self.OW, self.W, self.kw, self.sw, self.dw, self.pl)

    # -- in the emitted code --------------------------------------------------------------
    def first_row(self, b, oh):
        """The input row of output row ``oh``'s first tap (negative in the top padding)."""
        return b.sub(b.mul(oh, i64(self.sh)), i64(self.pt))

    def first_col(self, b, ow):
        """The input column of output column ``ow``'s first tap."""
        return b.sub(b.mul(ow, i64(self.sw)), i64(self.pl))
