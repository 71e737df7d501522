"""docs/passes.md is an executed tutorial: its python blocks run in order, in one namespace."""
from __future__ import annotations

import contextlib
import io
import os
import re

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "passes.md")


def test_passes_tutorial_runs():
    text = open(DOC).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 6
    ns: dict = {}
    for i, code in enumerate(blocks):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"docs/passes.md block {i + 1}", "exec"), ns)
