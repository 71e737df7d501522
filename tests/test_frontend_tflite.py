"""The TensorFlow Lite frontend: float32, float16-weight and int8 files made by
tf.lite.TFLiteConverter import, compile for numpy and cpu and match the LiteRT interpreter
(float within 1e-4 of the largest output, int8 within one quantization step); several
subgraphs; unsupported ops listed at once; corrupt files give typed errors only."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="making .tflite files needs tensorflow (extra 'tf')")
keras = pytest.importorskip("keras", reason="the TFLite tests build models with keras")
pytest.importorskip("tflite", reason="the TFLite frontend needs the tflite schema package (extra 'tf')")
litert = pytest.importorskip("ai_edge_litert.interpreter",
                             reason="comparing with LiteRT needs ai-edge-litert (extra 'tf')")

import galaxir as gx  # noqa: E402
from galaxir import errors  # noqa: E402
from galaxir.frontends.tf import import_tf  # noqa: E402
from galaxir.frontends.tflite import import_tflite  # noqa: E402

RTOL = 1e-4


def rand(*shape, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def litert_run(blob: bytes, inputs: list[np.ndarray], signature: str | None = None) -> list[np.ndarray]:
    it = litert.Interpreter(model_content=blob, num_threads=1)
    if signature is not None:
        runner = it.get_signature_runner(signature)
        names = sorted(it.get_signature_list()[signature]["inputs"])
        out = runner(**dict(zip(names, inputs)))
        return [out[k] for k in sorted(out)]
    for d, x in zip(it.get_input_details(), inputs):
        if tuple(d["shape"]) != x.shape:
            it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), inputs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def quantize_input(blob: bytes, x: np.ndarray) -> np.ndarray:
    it = litert.Interpreter(model_content=blob)
    d = it.get_input_details()[0]
    if d["dtype"] == np.float32:
        return x
    s, z = d["quantization"]
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x / s + z), info.min, info.max).astype(d["dtype"])


def output_step(blob: bytes) -> float:
    it = litert.Interpreter(model_content=blob)
    return float(it.get_output_details()[0]["quantization"][0])


def small_cnn():
    keras.utils.set_random_seed(3)
    L = keras.layers
    x = keras.Input((24, 24, 3), batch_size=1)
    y = L.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(x)
    r = y
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1)(y)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.Conv2D(8, 1)(y)
    y = L.Add()([y, r])
    y = L.MaxPooling2D(2)(y)
    y = L.AveragePooling2D(2, padding="same")(y)
    y = L.Conv2D(12, 3, padding="valid", activation="relu")(y)
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(6)(y)
    return keras.Model(x, y)


def convert(model, mode: str) -> bytes:
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "fp16":
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([rand(1, 24, 24, 3, seed=s)] for s in range(16))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = tf.int8
        c.inference_output_type = tf.int8
    return c.convert()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    model = small_cnn()
    d = tmp_path_factory.mktemp("tflite")
    out = {}
    for mode in ("f32", "fp16", "int8"):
        blob = convert(model, mode)
        path = d / f"cnn_{mode}.tflite"
        path.write_bytes(blob)
        out[mode] = (str(path), blob)
    return out


@pytest.mark.parametrize("mode", ["f32", "fp16"])
def test_float_files_match_litert(files, mode):
    path, blob = files[mode]
    m = gx.import_model(path)
    assert "transpose" not in m.op_counts()
    convs = [op for op in m.walk() if op.name == "conv"]
    assert len(convs) == 4 and all(op.attr("layout") == "NHWC" for op in convs)
    x = rand(1, 24, 24, 3, seed=5)
    (want,) = litert_run(blob, [x])
    for target in ("numpy", "cpu"):
        exe = gx.compile(m, target=target)
        (got,) = exe(x)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= RTOL, f"{target}: {err:.2e}"
    assert "0 on the numpy reference" in exe.report()


def test_int8_file_within_one_step_of_litert(files):
    path, blob = files["int8"]
    m = gx.import_model(path)
    counts = m.op_counts()
    assert counts.get("quantize_linear") and counts.get("dequantize_linear")
    assert m.graph.inputs[0].type.dtype.name == "int8"
    step = output_step(blob)
    for seed in (6, 7):
        x = quantize_input(blob, rand(1, 24, 24, 3, seed=seed))
        (want,) = litert_run(blob, [x])
        assert np.ptp(want) > 3, "a degenerate int8 output would not test anything"
        for target in ("numpy", "cpu"):
            (got,) = gx.compile(m, target=target)(x)
            assert got.dtype == np.int8
            diff = np.abs(got.astype(np.int32) - want.astype(np.int32)).max()
            assert diff <= 1, f"{target}: {diff} steps of {step}"


def test_dense_on_dynamic_batch_images_is_a_static_reshape():
    """Keras' Dense on an NHWC tensor with a dynamic batch: the converter computes the
    reshapes around FULLY_CONNECTED from SHAPE / GATHER / REDUCE_PROD; the import turns
    them into constant targets, so nothing runs on the reference."""
    keras.utils.set_random_seed(4)
    L = keras.layers
    x = keras.Input((6, 6, 4))
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.LayerNormalization(epsilon=1e-6)(y)
    y = L.Dense(12, activation="gelu")(y)
    y = L.Dense(8)(y)
    model = keras.Model(x, L.Add()([y, L.Conv2D(8, 1)(x)]))
    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    m = gx.import_model(blob)
    reshapes = [op for op in m.walk() if op.name == "reshape"]
    assert reshapes and all(op.operand(1).producer.name == "constant" for op in reshapes)
    exe = gx.compile(m, target="cpu")
    for batch in (1, 3):
        xv = rand(batch, 6, 6, 4, seed=batch)
        (want,) = litert_run(blob, [xv])
        for e in (exe, gx.compile(m, target="numpy")):
            (got,) = e(xv)
            assert np.abs(got - want).max() / np.abs(want).max() <= RTOL
    assert "0 on the numpy reference" in exe.report()


def test_zero_padding_joins_the_window():
    """ZeroPadding2D before a conv, and before a max pool of a ReLU output, becomes the
    window's pads; before a max pool of values that can be negative it stays a pad."""
    keras.utils.set_random_seed(5)
    L = keras.layers
    x = keras.Input((12, 12, 3), batch_size=1)
    y = L.Conv2D(8, 3, strides=2)(L.ZeroPadding2D(((1, 2), (3, 0)))(x))
    y = L.MaxPooling2D(3, strides=2)(L.ZeroPadding2D(1)(L.ReLU()(y)))
    z = L.MaxPooling2D(2)(L.ZeroPadding2D(1)(L.Conv2D(4, 1)(y)))
    model = keras.Model(x, z)
    xv = rand(1, 12, 12, 3, seed=9)
    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    want = model(xv, training=False).numpy()
    for m in (gx.import_model(blob), import_tf(model)):
        live_pads = [op for op in m.walk() if op.name == "pad" and op.results[0].users]
        assert len(live_pads) == 1 and live_pads[0].results[0].users[0].name == "max_pool"
        for target in ("numpy", "cpu"):
            (got,) = gx.compile(m, target=target)(xv)
            assert np.abs(got - want).max() / np.abs(want).max() <= RTOL


def test_bytes_and_several_subgraphs():
    class Two(tf.Module):
        def __init__(self):
            self.w = tf.Variable(rand(4, 3, seed=9))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def dense(self, x):
            return {"y": tf.nn.relu(x @ self.w)}

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def scale(self, x):
            return {"z": tf.nn.sigmoid(x * 3.0 - 1.0)}

    mod = Two()
    c = tf.lite.TFLiteConverter.from_concrete_functions(
        [mod.dense.get_concrete_function(), mod.scale.get_concrete_function()], mod)
    blob = c.convert()
    x = rand(1, 4, seed=10)
    sigs = sorted(litert.Interpreter(model_content=blob).get_signature_list())
    assert len(sigs) == 2
    for sig in sigs:
        m = import_tflite(blob, signature=sig)
        (want,) = litert_run(blob, [x], signature=sig)
        (got,) = gx.compile(m, target="cpu")(x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert gx.import_model(blob) == import_tflite(blob)  # TFL3 bytes go to this frontend
    with pytest.raises(errors.ModelImportError, match="no signature 'nope'"):
        import_tflite(blob, signature="nope")


def test_unsupported_ops_are_listed_at_once():
    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
    def f(x):
        return tf.math.cumsum(x, axis=1) + tf.sort(x, axis=1)

    blob = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert()
    with pytest.raises(errors.UnsupportedOpError) as e:
        import_tflite(blob)
    msg = str(e.value)
    assert "CUMSUM" in msg and ("TOPK_V2" in msg or "SORT" in msg), msg


def test_corrupt_files_give_model_import_errors(files, tmp_path):
    _, blob = files["f32"]
    for bad in (b"", b"TFL3", blob[:8], blob[:len(blob) // 2], b"\x00" * 4 + b"TFL3" + b"\xff" * 64):
        with pytest.raises(errors.ModelImportError):
            import_tflite(bad)
    p = tmp_path / "broken.tflite"
    p.write_bytes(blob[:100])
    with pytest.raises(errors.ModelImportError, match="TensorFlow Lite"):
        gx.import_model(str(p))


def _mutations(blob: bytes, n: int, seed: int):
    """Byte flips, overwritten words, truncations and splices of a valid file."""
    rs = np.random.RandomState(seed)
    size = len(blob)
    for i in range(n):
        b = bytearray(blob)
        kind = i % 4
        if kind == 0:
            for _ in range(rs.randint(1, 8)):
                b[rs.randint(8, size)] ^= 1 << rs.randint(8)
        elif kind == 1:  # a flatbuffer offset or length replaced
            at = rs.randint(8, size - 4) & ~3
            b[at:at + 4] = int(rs.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rs.randint(1 << 31)])).to_bytes(4, "little")
        elif kind == 2:
            b = b[:rs.randint(8, size)]
        else:
            at = rs.randint(8, size - 64)
            b[at:at + 64] = bytes(rs.randint(0, 256, 64, dtype=np.uint8))
        yield bytes(b)


def _fuzz(blob: bytes, n: int, seed: int) -> int:
    imported = 0
    for b in _mutations(blob, n, seed):
        try:
            m = import_tflite(b)
        except (errors.ModelImportError, errors.UnsupportedOpError):
            continue
        imported += 1
        assert m.graph.inputs  # an accepted mutation is still a verified module
    return imported


def test_fuzz_short(files):
    _, blob = files["int8"]
    _fuzz(blob, 100, seed=0)


@pytest.mark.fuzz
def test_fuzz_1000(files):
    for i, mode in enumerate(("f32", "fp16", "int8")):
        _fuzz(files[mode][1], 334, seed=100 + i)
