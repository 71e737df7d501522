"""Lowering rules for reduce ops (kernels in kernels_reduce.py).

Imported at the end of lower.py: the ``rule`` decorator registers into lower.RULES.
Anything a rule cannot handle returns a reason and the op runs on the numpy reference.
"""
from __future__ import annotations
