"""The backend contract: registry, entry-point plugins (a real pip-installed package),
and input validation in Executable before any backend code runs."""
import subprocess
import sys

import numpy as np
import pytest

import galaxir as gx
from galaxir import errors
from galaxir.backends import available_backends, get_backend
from galaxir.ir import GraphBuilder, tensor


def _module():
    gb = GraphBuilder()
    x = gb.input("x", tensor("f32", "N", 3))
    y = gb.input("y", tensor("f32", "N", 3))
    gb.output(gb.relu(gb.add(x, y)), "z")
    return gb.module()


@pytest.fixture(scope="module")
def toy_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    from pathlib import Path
    pkg = Path(__file__).parent / "plugin_pkg"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(pkg)], check=True)
    sys.path.insert(0, str(target))
    yield
    sys.path.remove(str(target))


def test_plugin_found_through_entry_point(toy_plugin):
    assert "toy" in available_backends()
    backend = get_backend("toy")
    assert type(backend).__module__ == "galaxir_toy_backend"
    exe = gx.compile(_module(), target="toy", level=0)
    x = np.array([[1, -2, 3]], np.float32)
    (z,) = exe(x, x)
    np.testing.assert_array_equal(z, [[2, 0, 6]])
    assert exe.calls == 1
    gb = GraphBuilder()
    a = gb.input("a", tensor("f32", 2))
    gb.output(gb.op("sub", a, a), "b")
    with pytest.raises(errors.UnsupportedOpError, match="toy backend cannot run: sub"):
        gx.compile(gb.module(), target="toy", level=0)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(errors.CompileError, match="no backend named 'nope'.*available"):
        gx.compile(_module(), target="nope", level=0)


@pytest.mark.parametrize("feeds, match", [
    ({"x": np.zeros((2, 3), np.float32)}, r"missing input\(s\) 'y'"),
    ({"x": np.zeros((2, 3), np.float32), "y": np.zeros((2, 3), np.float32), "w": 1}, r"unknown input name\(s\) 'w'"),
    ({"x": np.zeros((2, 3), np.float64), "y": np.zeros((2, 3), np.float32)}, "input 'x': expected dtype float32, got float64"),
    ({"x": np.zeros((2, 3, 1), np.float32), "y": np.zeros((2, 3), np.float32)}, "input 'x': expected rank 2"),
    ({"x": np.zeros((2, 4), np.float32), "y": np.zeros((2, 4), np.float32)}, "input 'x': dim 1 must be 3"),
    ({"x": np.zeros((2, 3), np.float32), "y": np.zeros((5, 3), np.float32)}, "symbol 'N', bound to 2 .* but is 5"),
    ({"x": "hello", "y": np.zeros((2, 3), np.float32)}, "input 'x'"),
])
def test_input_validation(feeds, match):
    exe = gx.compile(_module(), target="numpy", level=0)
    with pytest.raises(errors.InputValidationError, match=match):
        exe.run(feeds)


def test_positional_and_named_calls_agree():
    exe = gx.compile(_module(), target="numpy", level=0)
    x = np.random.rand(4, 3).astype(np.float32)
    (a,) = exe(x, x)
    b = exe.run({"x": x, "y": x})["z"]
    (c,) = exe(x=x, y=x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(errors.InputValidationError, match="takes 2 inputs"):
        exe(x)
