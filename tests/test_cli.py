"""The galaxir command line, through subprocess like a user runs it."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import galaxir as gx
from conftest import add_relu_model, cli


@pytest.fixture()
def model_file(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(add_relu_model(), str(p))
    return p


def test_convert_to_every_format_and_back(model_file, tmp_path):
    for suffix in (".gxm", ".gxir", ".onnx"):
        out = tmp_path / f"out{suffix}"
        r = cli("convert", model_file, "-o", out, "-O", "1", "--target", "numpy")
        assert r.returncode == 0, r.stderr
        assert out.exists() and "wrote" in r.stdout
        back = tmp_path / f"back{suffix}.gxm"
        r = cli("convert", out, "-o", back)
        assert r.returncode == 0, r.stderr
        m = gx.load(back)
        x = np.random.randn(2, 4).astype(np.float32)
        y = gx.compile(m, target="numpy", level=0).run({"x": x})["y"]
        np.testing.assert_allclose(y, np.maximum(x + np.arange(4, dtype=np.float32), 0), rtol=1e-6)


def test_show_prints_ir_and_stats(model_file):
    r = cli("show", model_file)  # by default at the target's level, as gx.compile
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"// O{gx.default_level('cpu')} for cpu")
    r = cli("show", model_file, "-O", "0")
    assert r.returncode == 0, r.stderr
    assert "func @main(%x: f32[batch,4])" in r.stdout
    assert "relu" in r.stdout and "// 4 ops" in r.stdout


def test_run_with_random_and_given_inputs(model_file, tmp_path):
    r = cli("run", model_file, "--target", "numpy")
    assert r.returncode == 0, r.stderr
    assert "y: float32[1, 4]" in r.stdout
    x = np.full((3, 4), -10, np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", model_file, "--target", "numpy", "--input", f"x={tmp_path / 'x.npy'}", "--save", tmp_path / "outs")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "outs" / "y.npy"), np.maximum(x + np.arange(4, dtype=np.float32), 0))


def test_bench_against_onnxruntime(model_file):
    pytest.importorskip("onnxruntime")
    r = cli("bench", model_file, "--target", "numpy", "--runs", "3", "--compare", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "ratio galaxir/onnxruntime" in r.stdout


def test_bench_profile_prints_the_table_and_writes_a_trace(model_file, tmp_path):
    trace = tmp_path / "t.json"
    r = cli("bench", model_file, "--runs", "2", "--profile", "--trace", trace)
    assert r.returncode == 0, r.stderr
    assert "by op kind" in r.stdout and "share" in r.stdout
    events = json.loads(trace.read_text())["traceEvents"]
    assert sum(1 for e in events if e["ph"] == "X" and e["cat"] == "run") == 2


def test_bisect_reports_no_culprit_on_a_sound_pipeline(model_file):
    r = cli("bisect", model_file, "-O", "1", "--target", "numpy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no pass changes the outputs" in r.stdout


def test_viz_writes_dot_or_svg(model_file, tmp_path):
    r = cli("viz", model_file, "-o", tmp_path / "g.dot")
    assert r.returncode == 0, r.stderr
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph") and "relu" in dot and "->" in dot
    r = cli("viz", model_file, "-o", tmp_path / "g.svg")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.svg").exists() or (tmp_path / "g.dot").exists()


@pytest.mark.parametrize("args, message", [
    (["show", "missing.onnx"], "no such file: missing.onnx"),
    (["convert", "{model}", "-o", "out.xyz"], "cannot tell the output format"),
    (["run", "{model}", "--input", "nope=x.npy", "--target", "numpy"], "no input 'nope'"),
    (["run", "{model}", "--input", "x", "--target", "numpy"], "--input wants name=file.npy"),
    (["run", "{model}", "--target", "nosuch"], "no backend named 'nosuch'"),
])
def test_errors_are_one_clear_line(model_file, tmp_path, args, message):
    r = cli(*[a.format(model=model_file) for a in args], cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("galaxir: error:") and message in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("--debug", *[a.format(model=model_file) for a in args], cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_bad_usage_exits_nonzero():
    r = cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_convert_with_pass_instrumentation(model_file, tmp_path):
    r = cli("convert", model_file, "-o", tmp_path / "o.gxir", "-O", "1", "--timing", "--verify-each",
            "--print-after", "cse", "--dump-dir", tmp_path / "stages")
    assert r.returncode == 0, r.stderr
    assert "cse" in r.stderr and "module @" in r.stderr
    stages = sorted((tmp_path / "stages").iterdir())
    assert len(stages) >= 2
    gx.parse(stages[-1].read_text())


def test_console_script_is_installed():
    """pyproject's [project.scripts] entry: `galaxir` on PATH once the package is installed."""
    import shutil
    exe = shutil.which("galaxir") or shutil.which("galaxir", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None, "the galaxir console script is not installed (pip install -e .)"
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "convert" in r.stdout and "bisect" in r.stdout
