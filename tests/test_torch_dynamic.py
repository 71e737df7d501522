"""Dynamic dims from PyTorch: torch.export ``Dim`` ranges and ``torch.compile(dynamic=True)``
reach the IR as symbolic dims with their bounds (kept through text and .gxm), one symbolic
module serves every batch and sequence length, and neither torch nor galaxir recompiles."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import galaxir as gx
from galaxir.errors import ParseError, VerificationError
from galaxir.frontends.torch import galaxir_backend, import_torch
from galaxir.ir import dim_bounds, set_dim_bounds
from galaxir.ir.bounds import KEY

Dim = torch.export.Dim


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BertBlock(nn.Module):
    """Embeddings (token + position), one encoder layer with a padding mask, a pooler."""

    def __init__(self, vocab=40, dim=32, heads=4, max_len=64):
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.ln0, self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, ids, mask):
        B, S = ids.shape
        x = self.ln0(self.tok(ids) + self.pos(torch.arange(S)))
        q, k, v = (t.view(B, S, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, S, -1)
        x = self.ln1(x + self.out(y))
        x = self.ln2(x + self.ffn(x))
        return x, x[:, 0].tanh()


def _seeded(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():
        with torch.no_grad():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def _bert_inputs(b: int, s: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (b, s), generator=g)
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    mask = (torch.arange(s)[None, :] < lengths[:, None]).long()
    return ids, mask


def _want(model, inputs) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _close(got, want, atol=2e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), w, atol=atol, rtol=1e-4)


# -- torch.export Dim ranges -----------------------------------------------------------------------
CASES = {
    "mlp": (MLP, lambda b, s: (torch.randn(b, 8),), lambda batch, seq: ({0: batch},)),
    "cnn": (CNN, lambda b, s: (torch.randn(b, 3, 12, 12),), lambda batch, seq: ({0: batch},)),
    "bert": (BertBlock, _bert_inputs, lambda batch, seq: ({0: batch, 1: seq}, {0: batch, 1: seq})),
}


@pytest.mark.parametrize("which", sorted(CASES))
def test_export_dim_ranges_reach_the_ir(which, tmp_path):
    cls, make, spec = CASES[which]
    model = _seeded(cls())
    batch, seq = Dim("batch", min=1, max=64), Dim("seq", min=2, max=48)
    m = import_torch(model, example_inputs=make(3, 9), dynamic_shapes=spec(batch, seq))
    want_bounds = {"batch": (1, 64)} if which != "bert" else {"batch": (1, 64), "seq": (2, 48)}
    assert dim_bounds(m) == want_bounds
    assert m.graph.inputs[0].type.shape[0] == "batch"
    if which == "bert":
        assert [v.type.shape for v in m.graph.inputs] == [("batch", "seq")] * 2
    # kept through the text form and .gxm
    text = m.to_text()
    assert dim_bounds(gx.parse(text)) == want_bounds
    gx.save(m, tmp_path / "m.gxm")
    loaded = gx.load(tmp_path / "m.gxm")
    assert dim_bounds(loaded) == want_bounds and loaded.to_text() == text
    # one executable, every size, torch's answers; exe.inputs reports the bounds
    exe = gx.compile(loaded, target="numpy")
    assert exe.inputs[0].bounds == {k: v for k, v in want_bounds.items()
                                    if k in exe.inputs[0].shape}
    for b, s in ((1, 2), (5, 17), (2, 48)):
        inputs = make(b, s)
        _close(exe(*[t.numpy() for t in inputs]), _want(model, inputs))


def test_unbounded_dim_and_static_module():
    model = _seeded(MLP())
    m = import_torch(model, example_inputs=(torch.randn(3, 8),), dynamic_shapes=({0: Dim("n")},))
    assert dim_bounds(m) == {"n": (0, None)}
    assert gx.compile(m, target="numpy").inputs[0].bounds == {"n": (0, None)}
    static = import_torch(model, example_inputs=(torch.randn(3, 8),))
    assert dim_bounds(static) == {} and KEY not in static.metadata
    assert gx.compile(static, target="numpy").inputs[0].bounds == {}


# -- the bounds in the IR are verified ---------------------------------------------------------------
def _tiny() -> gx.ir.Module:
    gb = gx.ir.GraphBuilder()
    x = gb.input("x", gx.ir.tensor("f32", "batch", 4))
    gb.output(gb.relu(x), "y")
    return gb.module()


def test_bounds_set_read_and_cleared():
    m = _tiny()
    set_dim_bounds(m, {"batch": (1, 8)})
    assert dim_bounds(m) == {"batch": (1, 8)} and m.verify() is m
    assert dim_bounds(m.clone()) == {"batch": (1, 8)}
    set_dim_bounds(m, {})
    assert dim_bounds(m) == {} and KEY not in m.metadata


@pytest.mark.parametrize("text, why", [
    ('{"batch": [4, 2]}', "0 <= min <= max"),
    ('{"batch": [-1, 2]}', "0 <= min <= max"),
    ('{"batch": [1]}', "expected [min, max]"),
    ('{"batch": [true, 2]}', "expected [min, max]"),
    ('{"batch": [1, 2.5]}', "expected [min, max]"),
    ('[1, 2]', "must map symbol names"),
    ("{batch", "not JSON"),
    ('{"seq": [1, 2]}', "no graph input"),
])
def test_bad_bounds_are_verification_errors(text, why):
    m = _tiny()
    m.metadata[KEY] = text
    with pytest.raises(VerificationError, match=why.replace("[", r"\[").replace("]", r"\]")):
        m.verify()
    with pytest.raises((VerificationError, ParseError)):
        gx.parse(m.to_text()).verify()
    with pytest.raises(VerificationError):
        set_dim_bounds(_tiny(), {"batch": (5, 1)})


# -- torch.compile ------------------------------------------------------------------------------------
def _counting_backend(made: list):
    def backend(gm, example_inputs):
        made.append(galaxir_backend(gm, example_inputs, target="numpy"))
        return made[-1]
    return backend


@pytest.fixture
def dynamo_counters():
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.mark.parametrize("which", sorted(CASES))
def test_torch_compile_dynamic_compiles_once(which, dynamo_counters):
    cls, make, _ = CASES[which]
    model = _seeded(cls())
    made: list = []
    fast = torch.compile(model, backend=_counting_backend(made), dynamic=True)
    # the first call's sizes differ from every static dim: dynamo gives equal sizes one
    # symbol (duck sizing), and a batch of 3 would be tied to the 3 channels
    sizes = [(4, 9), (5, 9), (2, 17), (7, 30), (6, 5)]
    with torch.no_grad():
        for b, s in sizes:
            inputs = make(b, s)
            got = fast(*inputs)
            got = got if isinstance(got, tuple) else (got,)
            _close([g.numpy() for g in got], _want(model, inputs))
    assert dynamo_counters["stats"]["unique_graphs"] == 1      # torch traced once
    assert len(made) == 1 and made[0].compiles == 1              # galaxir compiled once
    assert made[0].static_reason is None
    (entry,) = made[0].entries.values()
    m = entry.info.module
    sym = m.graph.inputs[0].type.shape[0]
    assert isinstance(sym, str) and sym != "?"
    lo, hi = dim_bounds(m)[sym]      # dynamo's range (its conv guards split batch at 16)
    assert lo <= 2 and (hi is None or hi >= 7)
    if which == "bert":
        shapes = [v.type.shape for v in m.graph.inputs]
        assert shapes[0] == shapes[1] and all(isinstance(d, str) for d in shapes[0])
        assert set(dim_bounds(m)) == set(shapes[0])


def test_torch_compile_automatic_dynamic(dynamo_counters):
    """Without dynamic=True dynamo compiles the first shape statically and, when a dim
    changes, once more with that dim symbolic; later sizes reuse the symbolic module."""
    model = _seeded(CNN())
    made: list = []
    fast = torch.compile(model, backend=_counting_backend(made))
    with torch.no_grad():
        for b in (2, 3, 5, 8, 6):
            x = torch.randn(b, 3, 12, 12)
            _close([fast(x).numpy()], _want(model, (x,)))
    assert dynamo_counters["stats"]["unique_graphs"] == 2
    assert sum(c.compiles for c in made) == 2
    symbolic = made[-1]
    (entry,) = symbolic.entries.values()
    assert isinstance(entry.info.module.graph.inputs[0].type.shape[0], str)


def test_torch_compile_mark_dynamic_on_cpu(dynamo_counters):
    """``torch._dynamo.mark_dynamic`` on the sequence dim, compiled for the cpu target."""
    pytest.importorskip("llvmlite")
    model = _seeded(BertBlock())
    made: list = []

    def backend(gm, example_inputs):
        made.append(galaxir_backend(gm, example_inputs, target="cpu"))
        return made[-1]

    fast = torch.compile(model, backend=backend)
    with torch.no_grad():
        for s in (6, 11, 23):
            ids, mask = _bert_inputs(2, s, seed=s)
            torch._dynamo.mark_dynamic(ids, 1)
            torch._dynamo.mark_dynamic(mask, 1)
            got = fast(ids, mask)
            _close([g.numpy() for g in got], _want(model, (ids, mask)), atol=1e-4)
    assert dynamo_counters["stats"]["unique_graphs"] == 1
    assert sum(c.compiles for c in made) == 1
    (entry,) = made[0].entries.values()
    assert entry.info.module.graph.inputs[0].type.shape[0] == 2   # batch stayed static
