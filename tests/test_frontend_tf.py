"""The TensorFlow/Keras frontend: every model imports, compiles for numpy and cpu and
matches TensorFlow eager (float within 1e-4 of the largest output); CNNs stay NHWC (no
transpose added by the import) and run natively on cpu."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="the TensorFlow frontend needs tensorflow (extra 'tf')")
keras = pytest.importorskip("keras", reason="the TensorFlow frontend tests need keras")

import galaxir as gx  # noqa: E402
from galaxir import errors  # noqa: E402
from galaxir.frontends.tf import import_tf  # noqa: E402

RTOL = 1e-4


def assert_close(got, want, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max()) / scale
    assert err <= RTOL, f"{what}: max error {err:.2e} of the largest output"


def check(module, inputs, expected, targets=("numpy", "cpu")):
    """Compile for each target and compare every output with TensorFlow's."""
    exes = {}
    for target in targets:
        exe = gx.compile(module, target=target)
        outs = exe(*inputs)
        assert len(outs) == len(expected)
        for i, (o, e) in enumerate(zip(outs, expected)):
            assert_close(o, e, f"{target} output {i}")
        exes[target] = exe
    return exes


def native_only(exe):
    report = exe.report()
    assert "0 on the numpy reference" in report, report


def rand(*shape, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def small_cnn():
    keras.utils.set_random_seed(1)
    L = keras.layers
    x = keras.Input((20, 20, 3))
    y = L.ZeroPadding2D(1)(x)
    y = L.Conv2D(16, 3, strides=2, use_bias=False)(y)
    y = L.BatchNormalization()(y)
    y = L.ReLU(6.0)(y)
    r = y
    y = L.DepthwiseConv2D(3, padding="same")(y)
    y = L.BatchNormalization()(y)
    y = L.Activation("swish")(y)
    y = L.Conv2D(16, 1, padding="same")(y)
    y = L.Add()([y, r])
    s = L.GlobalAveragePooling2D(keepdims=True)(y)  # squeeze-excitation
    s = L.Conv2D(16, 1, activation="sigmoid")(s)
    y = L.Multiply()([y, s])
    y = L.MaxPooling2D(2)(y)
    y = L.Conv2D(8, 3, padding="same", dilation_rate=2, activation="relu")(y)
    y = L.AveragePooling2D(3, strides=2, padding="same")(y)
    y = L.Flatten()(y)
    y = L.Dense(10)(y)
    model = keras.Model(x, y)
    # non-trivial batch-norm statistics
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rand(n, seed=3) * 0.1)
            layer.moving_variance.assign(np.abs(rand(n, seed=4)) + 0.5)
    return model


@pytest.fixture(scope="module")
def cnn():
    model = small_cnn()
    return model, import_tf(model)


def test_keras_cnn_matches_tf_and_stays_nhwc(cnn):
    model, m = cnn
    assert m.graph.inputs[0].type.shape == ("batch", 20, 20, 3)
    counts = m.op_counts()
    assert "transpose" not in counts
    convs = [op for op in m.walk() if op.name == "conv"]
    assert convs and all(op.attr("layout") == "NHWC" for op in convs)
    for batch in (1, 3):
        x = rand(batch, 20, 20, 3, seed=batch)
        exes = check(m, [x], [model(x, training=False).numpy()])
    native_only(exes["cpu"])


def test_gx_import_model_dispatches_keras(cnn):
    model, m = cnn
    assert gx.import_model(model) == m


def test_tf_function_several_inputs_and_outputs():
    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32),
                                  tf.TensorSpec([None, 6], tf.float32)])
    def f(a, b):
        h = tf.nn.relu(tf.matmul(a, tf.transpose(b)))
        mean = tf.reduce_mean(h, axis=1, keepdims=True)
        parts = tf.split(a, [2, 4], axis=1)
        return {"scores": tf.nn.softmax(h - mean), "sum": tf.reduce_sum(parts[1], axis=-1),
                "stacked": tf.stack([a[:, 0], b[:, -1]], axis=1)}

    m = gx.import_model(f)
    assert sorted(m.graph.output_names) == ["scores", "stacked", "sum"]
    a, b = rand(4, 6, seed=1), rand(4, 6, seed=2)
    want = f(a, b)
    exe = gx.compile(m, target="cpu")
    got = exe.run({"a": a, "b": b})
    for k in want:
        assert_close(got[k], want[k].numpy(), k)


def test_tf_module_and_saved_model(tmp_path):
    class Mod(tf.Module):
        def __init__(self):
            self.w = tf.Variable(rand(5, 3, seed=7))

        @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
        def __call__(self, x):
            return tf.tanh(x @ self.w) * 2.0

    mod = Mod()
    x = rand(2, 5, seed=8)
    m = gx.import_model(mod)
    check(m, [x], [mod(x).numpy()])
    tf.saved_model.save(mod, str(tmp_path / "sm"))
    m2 = gx.import_model(str(tmp_path / "sm"))
    check(m2, [x], [mod(x).numpy()], targets=("numpy",))


def test_transformer_block():
    keras.utils.set_random_seed(2)
    L = keras.layers
    x = keras.Input((7, 16))
    a = L.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    h = L.LayerNormalization()(x + a)
    f = L.Dense(32, activation="gelu")(h)
    y = L.LayerNormalization()(h + L.Dense(16)(f))
    model = keras.Model(x, y)
    m = import_tf(model)
    xv = rand(2, 7, 16, seed=5)
    check(m, [xv], [model(xv, training=False).numpy()])


def test_cond_and_while_loop():
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([], tf.float32)])
    def f(x, t):
        y = tf.cond(t > 0, lambda: x * 2.0, lambda: tf.nn.relu(x) - 1.0)

        def body(i, acc):
            return i + 1, acc * 0.5 + tf.reduce_sum(x, axis=1, keepdims=True)
        n, acc = tf.while_loop(lambda i, acc: i < 5, body, [tf.constant(0), y])
        return acc, n

    m = import_tf(f)
    counts = m.op_counts()
    assert counts.get("if") == 1 and counts.get("loop") == 1
    x = rand(3, 4, seed=12)
    for t in (1.0, -1.0):
        want = [v.numpy() for v in f(x, np.float32(t))]
        check(m, [x, np.float32(t)], want)


#: Keras recurrent layers and what their loops become: galaxir's lstm / gru op (run natively
#: on cpu) when the cell is Keras' standard one, else a loop region
RNN_LAYERS = {
    "lstm_seq": (lambda L: L.LSTM(5, return_sequences=True), "lstm"),
    "lstm_last": (lambda L: L.LSTM(5), "lstm"),
    "lstm_backwards": (lambda L: L.LSTM(4, go_backwards=True, return_sequences=True), "lstm"),
    "lstm_no_bias": (lambda L: L.LSTM(4, use_bias=False, return_sequences=True), "lstm"),
    "lstm_relu": (lambda L: L.LSTM(4, activation="relu", return_sequences=True), "loop"),
    "gru_seq": (lambda L: L.GRU(6, return_sequences=True), "gru"),
    "gru_last": (lambda L: L.GRU(6), "gru"),
    "gru_no_bias": (lambda L: L.GRU(3, use_bias=False), "gru"),
    "gru_reset_before": (lambda L: L.GRU(6, reset_after=False, return_sequences=True), "loop"),
    "bidirectional_lstm": (lambda L: L.Bidirectional(L.LSTM(5, return_sequences=True)), "lstm"),
    "bidirectional_gru_last": (lambda L: L.Bidirectional(L.GRU(4)), "gru"),
}


@pytest.mark.parametrize("name", sorted(RNN_LAYERS))
def test_keras_rnn_layers(name):
    keras.utils.set_random_seed(3)
    make, kind = RNN_LAYERS[name]
    model = keras.Sequential([keras.Input((7, 3)), make(keras.layers)])
    m = import_tf(model)
    assert m.graph.inputs[0].type.shape[0] == "batch"
    counts = m.op_counts()
    assert counts.get(kind) and not any(counts.get(k) for k in {"lstm", "gru", "loop"} - {kind})
    for batch in (1, 3):
        x = rand(batch, 7, 3, seed=20 + batch) * 2.0
        exes = check(m, [x], [model(x, training=False).numpy()])
    if kind != "loop":
        native_only(exes["cpu"])


def test_keras_rnn_dynamic_length_stays_a_loop():
    """A sequence length unknown at import: the trip count is not static, so a loop."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(5)])
    m = import_tf(model)
    assert m.op_counts().get("loop") == 1
    for steps in (2, 6):
        x = rand(2, steps, 3, seed=steps)
        check(m, [x], [model(x, training=False).numpy()])


def test_keras_stacked_rnn_model():
    """Two recurrent layers feeding a Dense head, the last state only at the end."""
    keras.utils.set_random_seed(4)
    L = keras.layers
    model = keras.Sequential([keras.Input((9, 4)), L.Bidirectional(L.GRU(8, return_sequences=True)),
                              L.LSTM(6), L.Dense(2)])
    m = import_tf(model)
    assert m.op_counts().get("gru") == 2 and m.op_counts().get("lstm") == 1
    x = rand(2, 9, 4, seed=31)
    check(m, [x], [model(x, training=False).numpy()])


def test_tensor_array_written_out_of_order_is_refused():
    @tf.function(input_signature=[tf.TensorSpec([3, 2], tf.float32)])
    def f(x):
        ta = tf.TensorArray(tf.float32, size=3)

        def body(i, ta):
            return i + 1, ta.write(2 - i, x[i] * 2.0)
        _, ta = tf.while_loop(lambda i, ta: i < 3, body, [0, ta])
        return ta.stack()

    with pytest.raises(errors.UnsupportedOpError, match="TensorList"):
        import_tf(f)


def test_tensor_array_loop():
    """A tf.while_loop filling a TensorArray one element per iteration, read back stacked."""
    @tf.function(input_signature=[tf.TensorSpec([None, 5, 2], tf.float32)])
    def f(x):
        xs = tf.TensorArray(tf.float32, size=5).unstack(tf.transpose(x, [1, 0, 2]))
        ta = tf.TensorArray(tf.float32, size=5)

        def body(i, acc, ta):
            acc = acc * 0.5 + xs.read(i)
            return i + 1, acc, ta.write(i, tf.tanh(acc))
        _, acc, ta = tf.while_loop(lambda i, a, t: i < 5, body, [0, tf.zeros_like(x[:, 0]), ta])
        return ta.stack(), acc

    m = import_tf(f)
    x = rand(3, 5, 2, seed=8)
    check(m, [x], [v.numpy() for v in f(x)])


def test_unsupported_ops_are_listed_at_once():
    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def f(x):
        return tf.math.bessel_i0(x) + tf.math.lgamma(x)

    with pytest.raises(errors.UnsupportedOpError) as e:
        import_tf(f)
    msg = str(e.value)
    assert "2 TF op(s)" in msg and "BesselI0" in msg and "Lgamma" in msg


def test_non_models_are_refused(tmp_path):
    with pytest.raises(errors.ModelImportError, match="SavedModel"):
        import_tf(str(tmp_path))
    with pytest.raises(errors.ModelImportError, match="input signature"):
        import_tf(tf.function(lambda x: x + 1))


APPS = ["ResNet50", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "DenseNet121",
        "ConvNeXtTiny"]


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("name", APPS)
def test_keras_applications(name, size):
    kw = {"include_preprocessing": False} if "MobileNetV3" in name else {}
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                              classifier_activation=None, **kw)
    m = import_tf(model)
    assert "transpose" not in m.op_counts()
    x = rand(2, size, size, 3, seed=11) + 1.0
    exes = check(m, [x], [model(x, training=False).numpy()])
    native_only(exes["cpu"])
