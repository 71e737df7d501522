"""The PyTorch frontend: models traced by torch.export, run on the numpy reference, against
torch eager; dynamic dims; the torch.compile backend; errors."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import galaxir as gx
from galaxir.errors import ModelImportError, UnsupportedOpError
from galaxir.frontends.torch import galaxir_backend, import_torch


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
    return model.eval()


def _reference(model: nn.Module, inputs: tuple) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    out = out if isinstance(out, (tuple, list)) else (out,)
    flat = []
    for o in out:
        flat.extend(o if isinstance(o, (tuple, list)) else [o])
    return [o.numpy() for o in flat]


def check(model: nn.Module, inputs: tuple, atol: float = 1e-5, rtol: float = 1e-4, **kw):
    """Import ``model``, run it on the numpy backend, compare with torch eager."""
    module = import_torch(model, example_inputs=inputs, **kw)
    module.verify()
    exe = gx.compile(module, target="numpy", level=0)
    got = exe(*[t.numpy() for t in inputs])
    want = _reference(model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)
    return module


# -- models ---------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(6, 12, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.rnn(x)


class Generator(nn.Module):
    """DCGAN-style: latent (N, 16, 1, 1) -> image (N, 3, 16, 16)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(16, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.net(z)


class GPTBlock(nn.Module):
    def __init__(self, vocab=50, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(16, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T))
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], dim=2)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + self.mlp(self.ln2(x))
        return F.log_softmax(self.head(x), dim=-1)


# -- tests -------------------------------------------------------------------------------------------
def test_cnn():
    torch.manual_seed(0)
    m = check(_randomize_norms(SmallCNN()), (torch.randn(2, 3, 16, 16),))
    counts = m.op_counts()
    assert counts["conv"] == 2 and counts["batch_norm"] == 2 and counts["max_pool"] == 1
    assert counts["gemm"] == 1
    conv = next(op for op in m.walk() if op.name == "conv" and op.attr("group") == 2)
    assert list(conv.attr("pads")) == [1, 1, 1, 1] and list(conv.attr("strides")) == [2, 2]


@pytest.mark.parametrize("cell,op", [(nn.LSTM, "lstm"), (nn.GRU, "gru")])
def test_recurrent(cell, op):
    torch.manual_seed(0)
    m = check(Recurrent(cell).eval(), (torch.randn(3, 5, 6),))
    assert m.op_counts()[op] == 2  # one galaxir op per layer


def test_dcgan_generator():
    torch.manual_seed(0)
    m = check(_randomize_norms(Generator()), (torch.randn(2, 16, 1, 1),))
    assert m.op_counts()["conv_transpose"] == 3
    assert m.graph.outputs[0].type.shape == (2, 3, 16, 16)


def test_transformer_encoder_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True).eval()
    m = check(layer, (torch.randn(2, 7, 32),), atol=1e-5)
    assert m.op_counts()["layer_norm"] == 2


def test_gpt_block_with_sdpa():
    torch.manual_seed(0)
    m = check(GPTBlock().eval(), (torch.randint(0, 50, (2, 9)),), atol=2e-5)
    counts = m.op_counts()
    assert counts["attention"] == 1 and counts["gelu"] == 1 and counts["log_softmax"] == 1
    att = next(op for op in m.walk() if op.name == "attention")
    assert att.attr("is_causal") == 1


def test_provenance_names_fx_nodes():
    torch.manual_seed(0)
    m = import_torch(SmallCNN().eval(), example_inputs=(torch.randn(1, 3, 8, 8),))
    ops = [op for op in m.walk() if not op.is_terminator]
    assert all(op.provenance for op in ops)
    convs = [op.provenance for op in ops if op.name == "conv"]
    assert convs == [("convolution",), ("convolution_1",)]
    weights = {op.provenance[0] for op in ops if op.name == "constant"}
    assert {"conv1.weight", "fc.bias", "bn1.running_var"} <= weights
    assert m.graph.input_names == ["x"]


def test_dynamic_batch():
    torch.manual_seed(0)
    model = GPTBlock().eval()
    batch = torch.export.Dim("batch", min=1, max=32)
    m = import_torch(model, example_inputs=(torch.randint(0, 50, (2, 9)),),
                     dynamic_shapes=({0: batch},))
    assert m.graph.inputs[0].type.shape == ("batch", 9)
    assert m.graph.outputs[0].type.shape == ("batch", 9, 50)
    exe = gx.compile(m, target="numpy", level=0)
    for n in (1, 5):
        idx = torch.randint(0, 50, (n, 9))
        (got,) = exe(idx.numpy())
        np.testing.assert_allclose(got, _reference(model, (idx,))[0], atol=2e-5, rtol=1e-4)


def test_text_and_gxm_round_trip(tmp_path):
    torch.manual_seed(0)
    m = import_torch(GPTBlock().eval(), example_inputs=(torch.randint(0, 50, (1, 5)),))
    text = m.to_text()
    assert gx.parse(text).to_text() == text
    gx.save(m, tmp_path / "gpt.gxm")
    assert gx.load(tmp_path / "gpt.gxm").to_text() == text


def test_dynamic_batch_cnn_and_gru():
    torch.manual_seed(0)
    cnn = _randomize_norms(SmallCNN())
    batch = torch.export.Dim("batch", min=1, max=32)
    m = import_torch(cnn, example_inputs=(torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    assert m.graph.outputs[0].type.shape == ("batch", 10)
    exe = gx.compile(m, target="numpy", level=0)
    for n in (1, 3):
        x = torch.randn(n, 3, 16, 16)
        np.testing.assert_allclose(exe(x.numpy())[0], _reference(cnn, (x,))[0], atol=1e-5, rtol=1e-4)
    rnn = Recurrent(nn.GRU).eval()
    m = import_torch(rnn, example_inputs=(torch.randn(2, 5, 6),), dynamic_shapes=({0: batch},))
    exe = gx.compile(m, target="numpy", level=0)
    x = torch.randn(4, 5, 6)
    for g, w in zip(exe(x.numpy()), _reference(rnn, (x,))):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


def test_already_decomposed_program():
    """An ExportedProgram decomposed by the user (LSTM unrolled, attention as matmuls)."""
    torch.manual_seed(0)
    model = Recurrent(nn.LSTM).eval()
    x = torch.randn(2, 4, 6)
    with torch.no_grad():
        ep = torch.export.export(model, (x,)).run_decompositions()
    m = gx.import_model(ep)
    assert "lstm" not in m.op_counts()
    got = gx.compile(m, target="numpy", level=0)(x.numpy())
    for g, w in zip(got, _reference(model, (x,))):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


class OpZoo(nn.Module):
    """Many small ops in one graph: promotion, scalars, indexing, shapes, reductions."""

    def __init__(self):
        super().__init__()
        self.gn = nn.GroupNorm(2, 4)
        self.prelu = nn.PReLU(4)

    def forward(self, x, i):
        a = F.silu(x) * 2 - 1 / (x.abs() + 1) + F.hardswish(x) + F.softplus(x, beta=2.0)
        b = torch.clamp(x, -0.5, 0.5) + F.elu(x) + torch.where(x > 0, x, x ** 2) + F.hardtanh(x)
        c = self.prelu(self.gn(a + b))
        d = F.pad(c, (1, 1, 0, 1), value=0.5)
        e = F.avg_pool2d(d, 2, ceil_mode=False) + F.interpolate(c, scale_factor=2, mode="nearest")[..., ::4, ::3]
        f = F.pixel_shuffle(torch.cat([e, e.flip(-1)], 1), 2)
        g = f[:, :, 1:5, :].sum(dim=(2, 3)) + f.amax(dim=-1).mean(-1) - f.std(dim=(2, 3))
        h = torch.cumsum(g, dim=1) + (i.float() // 3) + torch.remainder(i, 3).float()
        top = torch.topk(h, 2, dim=1).values
        picked = x.reshape(x.shape[0], -1)[:, i.clamp(0, 15)]
        return h, top, picked.sum(-1, keepdim=True), x.argmax(dim=1), torch.tril(x[:, 0]).exp()


def test_op_zoo():
    torch.manual_seed(0)
    model = OpZoo().eval()
    with torch.no_grad():
        model.prelu.weight.copy_(torch.rand(4) * 0.5)
    check(model, (torch.randn(2, 4, 6, 6), torch.tensor([1, 7])), atol=1e-4)


class BiLSTMWithState(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x, h, c):
        return self.lstm(x, (h, c))


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm([4, 5], elementwise_affine=False)
        self.inorm = nn.InstanceNorm2d(3, affine=True)

    def forward(self, x):
        return self.ln(x), self.inorm(x)


class MaskedAttention(nn.Module):
    def forward(self, q, k, v, bias):
        return (F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                F.scaled_dot_product_attention(q, k, v, attn_mask=bias > 0, scale=0.3))


@pytest.mark.parametrize("which", ["bilstm", "norms", "masked_attention"])
def test_more_layers(which):
    torch.manual_seed(0)
    if which == "bilstm":
        model, inputs = BiLSTMWithState(), (torch.randn(2, 5, 4), torch.randn(4, 2, 6),
                                            torch.randn(4, 2, 6))
    elif which == "norms":
        model, inputs = Norms(), (torch.randn(2, 3, 4, 5),)
    else:
        model, inputs = MaskedAttention(), (torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8),
                                            torch.randn(2, 3, 6, 8), torch.randn(4, 6))
    check(model.eval(), inputs)


def test_upsample_bilinear_and_resize():
    class Up(nn.Module):
        def forward(self, x):
            return (F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
                    F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True),
                    F.interpolate(x, size=(8, 12), mode="nearest"))
    torch.manual_seed(0)
    check(Up(), (torch.randn(1, 2, 4, 6),), atol=1e-5)


@pytest.mark.parametrize("which", ["cnn", "encoder"])
def test_torch_compile_backend(which):
    """torch.compile(model, backend=galaxir_backend); under no_grad the encoder layer takes
    torch's fused fast path (aten._transformer_encoder_layer_fwd)."""
    torch.manual_seed(0)
    if which == "cnn":
        model, shape = _randomize_norms(SmallCNN()), (3, 16, 16)
    else:
        model = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=True,
                                           activation="gelu").eval()
        shape = (7, 32)
    made = []

    def backend(gm, example_inputs):
        made.append(galaxir_backend(gm, example_inputs, target="numpy"))
        return made[-1]

    compiled = torch.compile(model, backend=backend)
    for n in (2, 3):
        x = torch.randn(n, *shape)
        with torch.no_grad():
            got, want = compiled(x), model(x)
        assert isinstance(got, torch.Tensor) and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    modules = [e.info.module for c in made for e in c.entries.values()]
    assert modules and all(len(m.graph.inputs) == 1 for m in modules)  # weights are constants


def test_backend_registered_by_name():
    from torch._dynamo import list_backends
    assert "galaxir" in list_backends(exclude_tags=())


def test_unsupported_op_names_op_and_node():
    class Bessel(nn.Module):
        def forward(self, x):
            return torch.special.i0(x) + 1

    with pytest.raises(UnsupportedOpError) as info:
        import_torch(Bessel(), example_inputs=(torch.randn(3),))
    msg = str(info.value)
    assert "aten.i0" in msg and "'i0'" in msg


def test_missing_example_inputs():
    with pytest.raises(ModelImportError, match="example_inputs"):
        import_torch(SmallCNN())


def test_import_model_dispatches_torch_and_restores_training_mode():
    model = SmallCNN().train()
    m = gx.import_model(model, example_inputs=(torch.randn(1, 3, 8, 8),))
    assert model.training  # the caller's mode is left as it was
    assert m.op_counts()["batch_norm"] == 2  # exported in eval mode: running statistics
