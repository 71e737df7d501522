"""The MindSpore frontend: networks built in MindSpore, exported with ``mindspore.export``
to MindIR, imported by galaxir and run on numpy and cpu against MindSpore's own output."""
from __future__ import annotations

import random

import numpy as np
import pytest

import galaxir as gx
from galaxir.errors import GalaxirError, ModelImportError, UnsupportedOpError
from galaxir.frontends.mindspore import import_mindir
from galaxir.frontends.mindspore.schema import ModelProto

ms = pytest.importorskip("mindspore", reason="the MindSpore frontend tests need mindspore (the 'mindspore' extra)")
from mindspore import nn, ops  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)


class LeNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, pad_mode="valid")
        self.c2 = nn.Conv2d(6, 16, 5, pad_mode="valid")
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.flat = nn.Flatten()
        self.f1 = nn.Dense(16 * 5 * 5, 120)
        self.f2 = nn.Dense(120, 10)

    def construct(self, x):
        x = self.pool(self.relu(self.c1(x)))
        x = self.pool(self.relu(self.c2(x)))
        return self.f2(self.relu(self.f1(self.flat(x))))


class Block(nn.Cell):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, pad_mode="same", has_bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, pad_mode="pad", padding=1, has_bias=True, group=4)
        self.b2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def construct(self, x):
        y = self.relu(self.b1(self.c1(x)))
        return self.relu(self.b2(self.c2(y)) + x)


class ResNetStyle(nn.Cell):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 7, stride=2, pad_mode="pad", padding=3)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, 2, pad_mode="same")
        self.block = Block(16)
        self.down = nn.Conv2d(16, 32, 1, stride=2)
        self.avg = nn.AvgPool2d(2, 2)
        self.mean = ops.ReduceMean(keep_dims=False)
        self.fc = nn.Dense(32, 10)
        self.soft = nn.Softmax()
        self.act = nn.HSwish()

    def construct(self, x):
        x = self.pool(ops.relu(self.bn(self.stem(x))))
        x = self.act(self.block(x))
        x = self.avg(ops.relu6(self.down(x)))
        return self.soft(self.fc(self.mean(x, (2, 3))))


class LSTMNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Dense(32, 4)

    def construct(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1, :])


class Encoder(nn.Cell):
    """A transformer encoder layer written out: attention with BatchMatMul and Softmax,
    LayerNorm, GELU, Dense on 3-d activations."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv = nn.Dense(d, 3 * d)
        self.proj = nn.Dense(d, d)
        self.ln1 = nn.LayerNorm((d,))
        self.ln2 = nn.LayerNorm((d,))
        self.ff1 = nn.Dense(d, 4 * d)
        self.ff2 = nn.Dense(4 * d, d)
        self.gelu = nn.GELU(approximate=False)
        self.softmax = nn.Softmax(axis=-1)
        self.bmm = ops.BatchMatMul()
        self.bmm_t = ops.BatchMatMul(transpose_b=True)

    def construct(self, x):
        b, s, d = x.shape
        qkv = self.qkv(x).reshape(b, s, 3, self.h, self.dh).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = self.softmax(self.bmm_t(q, k) / (self.dh ** 0.5))
        y = self.bmm(att, v).transpose(0, 2, 1, 3).reshape(b, s, d)
        x = self.ln1(x + self.proj(y))
        return self.ln2(x + self.ff2(self.gelu(self.ff1(x))))


class IfNet(nn.Cell):
    """A data-dependent if: MindIR keeps both branches as function graphs (Switch/Partial)."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(4, 3)

    def construct(self, x):
        y = self.dense(x)
        if y.sum() > 0:
            y = ops.relu(y) * 2.0
        else:
            y = ops.tanh(y) - 1.0
        return y


class WhileNet(nn.Cell):
    """A while loop whose trip count is an input: a header graph the body calls back."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(4, 4)

    def construct(self, x, n):
        i = ms.Tensor(0, ms.int32)
        while i < n:
            x = ops.tanh(self.dense(x)) + x * 0.5
            i = i + 1
        return x


class CastNet(nn.Cell):
    def construct(self, x):
        y = ops.cast(x, ms.int32)
        z = ops.cast(y * 2, ms.float32) + ops.cast(x > 0.5, ms.float32)
        return ops.cast(ops.cast(z, ms.float16), ms.float32) - ops.cast(x, ms.float64).astype(ms.float32)


NETS = {
    "lenet": (LeNet, (2, 1, 32, 32)),
    "resnet_style": (ResNetStyle, (2, 3, 32, 32)),
    "lstm": (LSTMNet, (2, 5, 8)),
    "encoder": (Encoder, (2, 6, 32)),
}
CNNS = {"lenet", "resnet_style"}


def _export(name: str, folder, fmt="MINDIR", dynamic_batch=False):
    ms.set_seed(0)
    cls, shape = NETS[name]
    net = cls()
    net.set_train(False)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    spec = ms.Tensor(shape=[None, *shape[1:]], dtype=ms.float32) if dynamic_batch else ms.Tensor(x)
    path = folder / f"{name}{'_dyn' if dynamic_batch else ''}"
    ms.export(net, spec, file_name=str(path), file_format=fmt)
    return net, x, f"{path}.{fmt.lower()}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mindir")
    return {name: _export(name, folder) for name in NETS}


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-6)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) / scale < 1e-4


@pytest.mark.parametrize("target", ["numpy", "cpu"])
@pytest.mark.parametrize("name", list(NETS))
def test_mindir_matches_mindspore(exported, name, target):
    net, x, path = exported[name]
    want = net(ms.Tensor(x)).asnumpy()
    exe = gx.compile(gx.import_model(path), target=target)
    (got,) = exe(x)
    _close(got, want)
    if target == "cpu" and name in CNNS:
        assert exe.report_data()["reference_ops"] == 0 if hasattr(exe, "report_data") else \
            ", 0 on the numpy reference" in exe.report()


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_if_and_cast(tmp_path, target):
    ms.set_seed(0)
    for cls, op in ((IfNet, "if"), (CastNet, "cast")):
        net = cls()
        x0 = np.random.default_rng(1).uniform(-3, 3, (2, 4)).astype(np.float32)
        path = tmp_path / cls.__name__
        ms.export(net, ms.Tensor(x0), file_name=str(path), file_format="MINDIR")
        m = gx.import_model(f"{path}.mindir")
        assert m.op_counts().get(op)
        exe = gx.compile(m, target=target)
        for seed in range(4):  # both branches of the if
            x = np.random.default_rng(seed).uniform(-3, 3, (2, 4)).astype(np.float32)
            x *= 1 if seed % 2 else -1
            _close(exe(x)[0], net(ms.Tensor(x)).asnumpy())


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_while_loop(tmp_path, target):
    ms.set_seed(0)
    net = WhileNet()
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    path = tmp_path / "whilenet"
    ms.export(net, ms.Tensor(x), ms.Tensor(3, ms.int32), file_name=str(path), file_format="MINDIR")
    m = gx.import_model(f"{path}.mindir")
    assert m.op_counts().get("loop") == 1
    exe = gx.compile(m, target=target)
    for n in (0, 1, 4):
        _close(exe(x, np.int32(n))[0], net(ms.Tensor(x), ms.Tensor(n, ms.int32)).asnumpy())


def test_cnn_import_adds_no_transpose(exported):
    m = import_mindir(exported["resnet_style"][2])
    names = [op.name for op in m.graph.walk()]
    assert "conv" in names and "transpose" not in names


def test_dynamic_batch(tmp_path):
    net, x, path = _export("lenet", tmp_path, dynamic_batch=True)
    m = gx.import_model(path)
    assert not isinstance(m.graph.inputs[0].type.shape[0], int)
    exe = gx.compile(m, target="cpu")
    for batch in (1, 3):
        xb = np.random.default_rng(batch).standard_normal((batch, 1, 32, 32)).astype(np.float32)
        (got,) = exe(xb)
        _close(got, net(ms.Tensor(xb)).asnumpy())


def test_onnx_export_is_the_other_route(tmp_path):
    net, x, path = _export("lenet", tmp_path, fmt="ONNX")
    (got,) = gx.compile(gx.import_model(path), target="cpu")(x)
    _close(got, net(ms.Tensor(x)).asnumpy())


def test_mindir_bytes_and_errors(exported):
    path = exported["lenet"][2]
    data = open(path, "rb").read()
    assert len(list(import_mindir(data).graph.walk())) > 0
    with pytest.raises(ModelImportError, match="not a MindIR model"):
        import_mindir(b"\x08\x96\x01garbage\xff\xff")
    with pytest.raises(ModelImportError, match="not a MindIR model"):
        import_mindir(data[: len(data) // 3])
    with pytest.raises(ModelImportError, match="no such file"):
        gx.import_model(str(path) + ".missing.mindir")


def test_unsupported_ops_are_listed_at_once(exported):
    model = ModelProto()
    model.ParseFromString(open(exported["lenet"][2], "rb").read())
    renamed = 0
    for p in model.primitives:
        if p.op_type in ("ReLU", "MaxPool"):
            p.op_type = "Frobnicate" if p.op_type == "ReLU" else "Twiddle"
            renamed += 1
    assert renamed == 2
    with pytest.raises(UnsupportedOpError) as e:
        import_mindir(model.SerializeToString())
    assert "Frobnicate" in str(e.value) and "Twiddle" in str(e.value) and "ONNX" in str(e.value)


def test_tensor_data_is_checked(exported):
    model = ModelProto()
    model.ParseFromString(open(exported["lenet"][2], "rb").read())
    model.graph.parameter[0].raw_data = model.graph.parameter[0].raw_data[:-4]
    with pytest.raises(ModelImportError, match="bytes of data"):
        import_mindir(model.SerializeToString())
    model.ParseFromString(open(exported["lenet"][2], "rb").read())
    ext = model.graph.parameter[0].external_data
    ext.location, ext.offset, ext.length = "../../etc/passwd", 0, 16
    with pytest.raises(ModelImportError, match="outside the model's folder|import the model from its path"):
        import_mindir(model.SerializeToString())


def test_mutated_mindir_files_give_typed_errors(exported):
    """200 byte-level mutations of a real file: each imports and runs, or raises a galaxir
    error; nothing else escapes."""
    data = bytearray(open(exported["lenet"][2], "rb").read())
    rng = random.Random(7)
    x = exported["lenet"][1]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(200):
        d = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(d))
            d[i] = rng.randrange(256)
        if rng.random() < 0.2:
            d = d[: rng.randrange(len(d))]
        try:
            m = import_mindir(bytes(d))
            gx.compile(m, target="numpy")(x)
            outcomes["ok"] += 1
        except GalaxirError:
            outcomes["error"] += 1
    assert outcomes["ok"] + outcomes["error"] == 200
