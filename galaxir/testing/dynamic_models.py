"""Transformer encoders exported with dynamic batch and sequence axes, the way NLP models
are shipped: a BERT-style encoder (token + position embeddings, padding mask built in the
graph from ``attention_mask``, position ids from ``arange(seq)``) and
``torch.nn.TransformerEncoder``; random seeded weights, exported on the fly by the
TorchScript exporter (``dynamo=False``, ``dynamic_axes``) or the dynamo exporter
(``dynamic_shapes``).  Used by tests and ``benchmarks/bench_dynamic.py``; needs torch.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np

EXPORTERS = ("torchscript", "dynamo")
MODELS = ("bert", "torch_encoder")


def available(name: str, exporter: str = "torchscript") -> str | None:
    """None when ``name`` can be exported with ``exporter`` here, else why not."""
    if name not in MODELS:
        return f"unknown model {name!r}; known: {', '.join(MODELS)}"
    if exporter not in EXPORTERS:
        return f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}"
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not here"
        return f"torch is not usable here ({type(e).__name__}: {e})"
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"the dynamo exporter needs onnxscript ({type(e).__name__}: {e})"
    if name == "torch_encoder" and exporter == "torchscript":
        # nn.MultiheadAttention computes bsz * num_heads in Python: the tracer bakes the
        # export-time sizes into its reshapes (onnxruntime fails on any other shape too)
        return "the TorchScript exporter bakes nn.MultiheadAttention's sizes into the graph"
    return None


def _bert(layers: int, hidden: int, heads: int, vocab: int, max_pos: int):
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.ln1 = nn.LayerNorm(hidden)
            self.ff1 = nn.Linear(hidden, 4 * hidden)
            self.ff2 = nn.Linear(4 * hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden)

        def forward(self, x, bias):
            b, s, _ = x.shape
            q, k, v = self.qkv(x).split(hidden, dim=-1)
            # the reshape targets are computed from x's runtime shape, as HF models do
            q = q.reshape(b, s, heads, hidden // heads).transpose(1, 2)
            k = k.reshape(b, s, heads, hidden // heads).transpose(1, 2)
            v = v.reshape(b, s, heads, hidden // heads).transpose(1, 2)
            att = (q @ k.transpose(-1, -2)) / float(np.sqrt(hidden // heads)) + bias
            ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, hidden)
            x = self.ln1(x + self.out(ctx))
            return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, hidden)
            self.pos = nn.Embedding(max_pos, hidden)
            self.ln = nn.LayerNorm(hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            s = input_ids.shape[1]
            pos = torch.arange(s, dtype=torch.long).unsqueeze(0).expand_as(input_ids)
            x = self.ln(self.tok(input_ids) + self.pos(pos))
            keep = (attention_mask[:, None, None, :] == 1) & (input_ids[:, None, None, :] >= 0)
            bias = torch.where(keep, 0.0, -1e4).to(x.dtype)
            for layer in self.layers:
                x = layer(x, bias)
            return x

    return Bert()


def _torch_encoder(layers: int, hidden: int, heads: int, vocab: int, max_pos: int):
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, hidden)
            layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0,
                                               activation="gelu", batch_first=True)
            self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        def forward(self, input_ids, attention_mask):
            pad = attention_mask == 0
            mask = torch.zeros(pad.shape, dtype=torch.float32).masked_fill(pad, float("-inf"))
            return self.enc(self.tok(input_ids), src_key_padding_mask=mask)

    return Encoder()


def build(name: str, layers: int = 2, hidden: int = 128, heads: int = 4, vocab: int = 1000,
          max_pos: int = 512, seed: int = 0):
    """The torch module ``name`` (one of MODELS) in eval mode, seeded random weights."""
    import torch
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    torch.manual_seed(seed)
    fn = _bert if name == "bert" else _torch_encoder
    return fn(layers, hidden, heads, vocab, max_pos).eval()


def feeds(batch: int, seq: int, vocab: int = 1000, seed: int = 0) -> dict:
    """Random ``input_ids`` and an ``attention_mask`` padding each row's tail."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    for b in range(batch):
        mask[b, rng.integers(max(1, seq // 2), seq + 1):] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export(name: str, path: str, exporter: str = "torchscript", **kw) -> str:
    """Export model ``name`` to ``path`` with dynamic batch and sequence axes; returns path."""
    import torch
    why = available(name, exporter)
    if why:
        raise ValueError(f"cannot export {name} with {exporter}: {why}")
    model = build(name, **kw)
    f = feeds(2, 16)
    args = (torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {n: {0: "batch", 1: "seq"} for n in names}
            axes["out"] = {0: "batch", 1: "seq"}
            torch.onnx.export(model, args, path, input_names=names, output_names=["out"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        else:
            B, S = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
            shapes = {n: {0: B, 1: S} for n in names}
            torch.onnx.export(model, args, path, input_names=names, output_names=["out"],
                              dynamic_shapes=shapes, dynamo=True, opset_version=18,
                              external_data=False)
    if not os.path.exists(path):
        raise RuntimeError(f"export of {name} with {exporter} wrote no file")
    return path
