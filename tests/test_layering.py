"""The layers depend downward (docs/architecture.md): ``ir`` at the bottom, ``reference`` (the
numpy semantics of every op) on ``ir``, ``passes`` on both, backends and frontends above.
Read from the source: every import statement of every module, function-level ones included."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import galaxir

PACKAGE = Path(galaxir.__file__).parent

#: what each low layer may import from galaxir (besides itself)
ALLOWED = {
    "galaxir.ir": ("galaxir.ir", "galaxir.errors"),
    "galaxir.reference": ("galaxir.reference", "galaxir.ir", "galaxir.errors"),
    "galaxir.passes": ("galaxir.passes", "galaxir.reference", "galaxir.ir", "galaxir.errors"),
}

#: entry points that sit above every layer although they live in a low package
ENTRY_POINTS = {
    "galaxir.passes.__main__",  # ``python -m galaxir.passes``: loads models like the CLI
}

#: Imports the layering forbids that are still there: removed by the pipeline work (issue 14
#: part 2: the Backend object travels in the pass context, so no pass calls get_backend;
#: bisect gets its reference executable from the context).  Delete entries as they go; the
#: test fails on an entry that no longer matches an import.
ALLOWED_VIOLATIONS = {
    ("galaxir.passes.pipeline", "galaxir.backends"),        # removed by the pipeline work
    ("galaxir.passes.layout", "galaxir.backends"),          # removed by the pipeline work
    ("galaxir.passes.bisect", "galaxir.backends.numpy"),    # removed by the pipeline work
}


def module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; ``from X import y`` gives
    ``X.y`` when X is a package (y may be a submodule), else X."""
    mod, is_pkg = module_name(path)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if node.module:
                out.append((node.lineno, target))
            else:  # from .. import x, y: each is a module (or a name) of that package
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod, _ = module_name(path)
        layer = next((lay for lay in ALLOWED if _within(mod, lay)), None)
        if layer is None or mod in ENTRY_POINTS:
            continue
        for line, target in imports_of(path):
            if target != "galaxir" and not _within(target, "galaxir"):
                continue  # numpy, the standard library, ...
            if not any(_within(target, ok) for ok in ALLOWED[layer]):
                found.append((mod, line, target))
    return found


def test_the_scanner_resolves_relative_imports():
    fold = PACKAGE / "passes" / "basic" / "fold.py"
    targets = {t for _, t in imports_of(fold)}
    assert "galaxir.reference.evaluator" in targets and "galaxir.ir.traits" in targets
    init = PACKAGE / "backends" / "numpy" / "__init__.py"
    assert "galaxir.backends.numpy.interpreter" in {t for _, t in imports_of(init)}


def test_low_layers_import_only_downward():
    found = layer_violations()
    unexpected = [f"{m}:{line} imports {t}" for m, line, t in found
                  if not any(m == am and _within(t, at) for am, at in ALLOWED_VIOLATIONS)]
    assert not unexpected, "layering broken (docs/architecture.md):\n" + "\n".join(unexpected)


def test_the_allow_list_only_names_imports_that_remain():
    found = layer_violations()
    stale = [v for v in ALLOWED_VIOLATIONS
             if not any(m == v[0] and _within(t, v[1]) for m, _, t in found)]
    assert not stale, f"remove from ALLOWED_VIOLATIONS, the import is gone: {stale}"


def test_passes_never_import_frontends_serialize_or_cli():
    banned = ("galaxir.frontends", "galaxir.serialize", "galaxir.cli", "galaxir.onnx_backend",
              "galaxir.backends")
    for mod, line, target in layer_violations():
        if any(_within(target, b) for b in banned):
            assert (mod, target) in ALLOWED_VIOLATIONS, f"{mod}:{line} imports {target}"


def test_folding_loads_no_backend():
    """At run time too: O1 (constant folding included) on a model with constants to fold,
    with no target, imports no backend module."""
    code = (
        "import sys, numpy as np\n"
        "from galaxir.ir import GraphBuilder, TensorType, DType\n"
        "from galaxir.passes import optimize\n"
        "gb = GraphBuilder('g')\n"
        "x = gb.input('x', TensorType(DType.float32, (2, 3)))\n"
        "c = gb.exp(gb.constant(np.ones((2, 3), np.float32)))\n"
        "gb.output(gb.add(x, c))\n"
        "m = optimize(gb.module(), level=1)\n"
        "assert 'exp' not in m.op_counts(), m.op_counts()\n"
        "bad = sorted(n for n in sys.modules if n.startswith(('galaxir.backends', "
        "'galaxir.frontends', 'galaxir.serialize')))\n"
        "assert not bad, bad\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=PACKAGE.parent, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_numpy_backend_keeps_its_old_names():
    """The reference moved below the passes; what plugins imported from backends.numpy is
    the same object (one kernel registry, one copy of each kernel module)."""
    import galaxir.backends.numpy as gnp
    import galaxir.backends.numpy.kernels.nn as old_nn
    import galaxir.backends.numpy.registry as old_registry
    import galaxir.reference as ref
    import galaxir.reference.kernels.nn as new_nn
    assert old_nn is new_nn and old_registry.KERNELS is ref.registry.KERNELS
    assert gnp.kernel is ref.kernel and gnp.get_kernel is ref.get_kernel
    assert gnp.Interpreter is ref.Interpreter and gnp.KernelContext is ref.KernelContext
    assert gnp.get_kernel("conv") is ref.get_kernel("conv") is not None
