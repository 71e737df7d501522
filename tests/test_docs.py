"""Every ```python block in README.md and docs/*.md runs, top to bottom, one namespace per page."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", [p for p in DOCS if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    if "import torch" in page.read_text():
        pytest.importorskip("torch")  # pages about the optional torch frontend
    if "import tensorflow" in page.read_text():
        pytest.importorskip("tensorflow")  # pages about the optional TF/TFLite frontends
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    blocks = BLOCK.findall(page.read_text())
    assert blocks
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.name}, python block {i} failed: {type(e).__name__}: {e}") from e
