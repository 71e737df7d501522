"""Converters for the sequence-model ops: RNN, GRU, LSTM, Attention, LinearAttention,
FlexAttention (ai.onnx.preview), RotaryEmbedding, SwiGLU."""
from __future__ import annotations

from ....ir.ops.sequence_models import flex_score_dtype
from ....ir.types import DType, TensorType
from ..importer import converter

_RNN_KEYS = ("activation_alpha", "activation_beta", "activations", "clip", "direction",
             "hidden_size", "layout")


def _rnn(gx_name: str, n_inputs: int, extra: tuple[str, ...], n_results: int):
    def convert(ctx):
        # LSTM-1 / GRU-1 / RNN-1 carried `output_sequence` (Y is always produced now);
        # `layout` arrived in opset 14 (absent means 0); GRU-1 had no linear_before_reset.
        kw = {k: ctx.attrs[k] for k in _RNN_KEYS + extra if k in ctx.attrs}
        if "activations" in kw:
            kw["activations"] = tuple(a for a in kw["activations"])
        ins = list(ctx.inputs[:n_inputs])
        outs = ctx.op(gx_name, *ins, **kw)
        return list(outs)[:max(ctx.num_outputs, 1)] if n_results > 1 else [outs]
    return convert


converter("RNN")(_rnn("rnn", 6, (), 2))
converter("GRU")(_rnn("gru", 6, ("linear_before_reset",), 2))
converter("LSTM")(_rnn("lstm", 8, ("input_forget",), 3))


def _dtype(ctx, name: str) -> DType | None:
    code = ctx.attr(name)
    if code is None:
        return None
    try:
        return DType.from_onnx(int(code))
    except ValueError:
        raise ctx.unsupported(f"attribute {name}={code} is not a known element type") from None


@converter("Attention")
def attention(ctx):
    kw = {k: ctx.attrs[k] for k in ("is_causal", "kv_num_heads", "q_num_heads",
                                    "qk_matmul_output_mode", "scale", "softcap",
                                    "left_window_size", "right_window_size") if k in ctx.attrs}
    outs = ctx.op("attention", *ctx.inputs[:7], softmax_precision=_dtype(ctx, "softmax_precision"), **kw)
    return list(outs)[:ctx.num_outputs]


@converter("LinearAttention")
def linear_attention(ctx):
    outs = ctx.op("linear_attention", *ctx.inputs[:6], **ctx.attrs)
    return list(outs)[:ctx.num_outputs]


@converter("FlexAttention", domain="ai.onnx.preview")
def flex_attention(ctx):
    q = ctx.inputs[0]
    qt = q.type if isinstance(q.type, TensorType) else TensorType(DType.float32, None)
    precision = _dtype(ctx, "softmax_precision")
    score_t = TensorType(flex_score_dtype(qt.dtype, precision), None)
    regions = []
    for name in ("score_mod", "prob_mod"):
        g = ctx.attrs.get(name)
        if g is None:
            regions.append(ctx.b.region([score_t], body=lambda b, x: x))
        else:
            if len(g.input) != 1 or len(g.output) != 1:
                raise ctx.unsupported(f"{name} must take one input and produce one output")
            regions.append(ctx.subgraph(g, [score_t]))
    kw = {"scale": ctx.attrs["scale"]} if "scale" in ctx.attrs else {}
    op = ctx.b.create("preview.flex_attention", *ctx.inputs[:3], regions=regions,
                      softmax_precision=precision, **kw)
    return [op.results[0]]


@converter("RotaryEmbedding")
def rotary_embedding(ctx):
    return [ctx.op("rotary_embedding", *ctx.inputs[:4], **ctx.attrs)]


@converter("SwiGLU")
def swiglu(ctx):
    return [ctx.op("swiglu", *ctx.inputs[:2], **ctx.attrs)]
