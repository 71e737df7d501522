"""Networks built the way people build them today, from torchvision and transformers code
with seeded random weights, exported to ONNX on the fly (never committed).

The model-zoo files the onnx package ships are 2012-2016 CNNs; tuning on them alone tunes
for plain 3x3 convs.  These cover depthwise and grouped convs, squeeze-excitation,
hard-swish/SiLU/GELU, layer norm in channels-last, window attention, and transformer
encoders/decoders.  Everything here needs the optional ``torch`` and ``bench`` extras
(torchvision, transformers); :func:`available` says why a model cannot be built.

Batch-norm statistics come from a few seeded forward passes in train mode, so that the
normalization does real work (fresh running stats are mean 0, var 1: an identity).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Callable

import numpy as np

#: name -> (builder, input description); the builders live below
MODELS: dict[str, Callable] = {}
#: architectures kept out of the tuning set (``MODELS``): a check that a speedup is not
#: fitted to the benchmark set.  Opt-in: ``bench_cpu.py --set heldout``.
HELDOUT: dict[str, Callable] = {}
IMAGE = (1, 3, 224, 224)
SEQ = 128


def _model(name):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def _import_torchvision():
    """torchvision's PyPI wheel carries a C extension built for a CUDA torch; with the CPU
    torch it fails to load and torchvision's import then fails registering fake kernels for
    two of its ops.  The models use none of its ops: declaring the two schemas lets the
    pure-Python package import."""
    import torch
    try:
        import torchvision
        return torchvision
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "DEF")   # noqa: F841 (kept by torch's registry)
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _import_torchvision.lib = lib
    import importlib
    import sys
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    return importlib.import_module("torchvision")


def _builder(name: str) -> Callable | None:
    return MODELS.get(name) or HELDOUT.get(name)


def available(name: str) -> str | None:
    """None when `name` can be built here, else why not."""
    if _builder(name) is None:
        return f"unknown model {name!r}; known: {', '.join(MODELS)}, {', '.join(HELDOUT)}"
    need = ["torch"] + (["transformers"] if name in _TRANSFORMERS else
                        [] if name in ("bilstm", "dcgan") else ["torchvision"])
    for pkg in need:
        try:
            if pkg == "torchvision":
                _import_torchvision()
            else:
                __import__(pkg)
        except Exception as e:   # noqa: BLE001 - any import failure means "not here"
            return f"{pkg} is not usable here ({type(e).__name__}: {e})"
    return None


def _calibrate_bn(model, x, passes: int = 3):
    """Running batch-norm statistics from a few seeded forward passes in train mode."""
    import torch
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model.eval()
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(max(x.shape[0], 2), *x.shape[1:], generator=g))
    return model.eval()


def _no_zero_layers(model):
    """Some classifiers start with all-zero weights (ViT's head): the output would be all
    zeros and a comparison would check nothing.  Give those layers seeded random values."""
    import torch
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.ndim >= 2 and not w.any():
                w.copy_(torch.randn(w.shape, generator=g) * 0.02)


def _vision(fn_name: str, image=IMAGE, **kw):
    def build():
        import torch
        tv = _import_torchvision()
        torch.manual_seed(0)
        model = getattr(tv.models, fn_name)(weights=None, **kw)
        _no_zero_layers(model)
        x = torch.randn(*image, generator=torch.Generator().manual_seed(2))
        return _calibrate_bn(model, x), (x,), ["input"]
    return build


for _name, _fn in (("mobilenet_v3_large", "mobilenet_v3_large"),
                   ("mobilenet_v3_small", "mobilenet_v3_small"),
                   ("efficientnet_b1", "efficientnet_b1"), ("mnasnet1_0", "mnasnet1_0"),
                   ("regnet_x_800mf", "regnet_x_800mf"), ("regnet_y_400mf", "regnet_y_400mf"),
                   ("shufflenet_v2_x1_5", "shufflenet_v2_x1_5"), ("convnext_tiny", "convnext_tiny"),
                   ("swin_t", "swin_t"), ("vit_b_32", "vit_b_32"), ("resnext50_32x4d", "resnext50_32x4d")):
    MODELS[_name] = _vision(_fn)


def _transformers():
    """transformers imports torchvision when it is installed: make that import work first."""
    with contextlib.suppress(ImportError):
        _import_torchvision()
    import transformers
    return transformers


@_model("bert")
def _bert():
    """A BERT-base-style encoder (12 layers, hidden 768), batch 1, 128 tokens, with a
    padding mask."""
    import torch
    _transformers()
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    model = BertModel(BertConfig(attn_implementation="eager")).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 30522, (1, SEQ), generator=g)
    mask = torch.ones(1, SEQ, dtype=torch.int64)
    mask[:, SEQ - 16:] = 0
    return _last_hidden_state(model), (ids, mask), ["input_ids", "attention_mask"]


@_model("gpt2")
def _gpt2():
    """A GPT-2-small-style decoder (12 layers, hidden 768, causal), batch 1, 128 tokens.
    (The mask is passed: without one, transformers builds it with an op the ONNX exporter
    lacks.)"""
    import torch
    _transformers()
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(use_cache=False, attn_implementation="eager")).eval()
    ids = torch.randint(0, 50257, (1, SEQ), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, SEQ, dtype=torch.int64)
    return _last_hidden_state(model), (ids, mask), ["input_ids", "attention_mask"]


@_model("bilstm")
def _bilstm():
    """A 2-layer bidirectional LSTM tagger over 64 steps."""
    import torch

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(128, 256, num_layers=2, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(512, 32)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    torch.manual_seed(0)
    return Tagger().eval(), (torch.randn(1, 64, 128, generator=torch.Generator().manual_seed(2)),), ["x"]


@_model("dcgan")
def _dcgan():
    """A DCGAN generator: a 100-d latent through five transposed convs to 3x64x64."""
    import torch
    nn = torch.nn

    def up(i, o, s, p):
        return [nn.ConvTranspose2d(i, o, 4, s, p, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)]

    torch.manual_seed(0)
    model = nn.Sequential(*up(100, 512, 1, 0), *up(512, 256, 2, 1), *up(256, 128, 2, 1),
                          *up(128, 64, 2, 1), nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh())
    x = torch.randn(1, 100, 1, 1, generator=torch.Generator().manual_seed(2))
    return _calibrate_bn(model, x), (x,), ["z"]


def _last_hidden_state(model):
    """A transformers model wrapped so that export sees one tensor output."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Wrapped().eval()


def export(name: str, folder: str) -> tuple[str, dict[str, np.ndarray]]:
    """Build `name`, export it to ``folder/name.onnx`` (opset 17) and return the path with
    the feeds that were traced.  Raises RuntimeError with the reason when it cannot."""
    why = available(name)
    if why:
        raise RuntimeError(why)
    import torch
    model, args, input_names = _builder(name)()
    path = os.path.join(folder, f"{name}.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, input_names=input_names, output_names=["output"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    feeds = {n: a.numpy() for n, a in zip(input_names, args)}
    return path, feeds


# -- held-out set -----------------------------------------------------------------------
# Not tuned on: other torchvision families and transformer variants (post-norm and
# pre-norm, RMSNorm, rotary embeddings, gated SiLU MLPs, grouped-query attention, relative
# position buckets, a conv front end for audio).  Transformer configs are reduced (fewer
# layers) so that a full pass stays affordable on a shared machine; each block is the
# real library code.
for _name, _kw in (("resnet18", {}), ("mobilenet_v2", {}), ("densenet121", {}),
                   ("googlenet", {"aux_logits": False, "init_weights": True}),
                   ("inception_v3", {"aux_logits": False, "init_weights": True,
                                     "image": (1, 3, 299, 299)}),
                   ("efficientnet_v2_s", {}), ("regnet_y_800mf", {}), ("vgg11_bn", {}),
                   ("wide_resnet50_2", {}), ("convnext_small", {}), ("swin_v2_t", {}),
                   ("maxvit_t", {}), ("vit_b_16", {})):
    HELDOUT[_name] = _vision(_name, **_kw)

#: the models that need transformers
_TRANSFORMERS = {"bert", "gpt2"}


def _heldout_text(name):
    def deco(fn):
        HELDOUT[name] = fn
        _TRANSFORMERS.add(name)
        return fn
    return deco


def _text_inputs(vocab: int, pad: int = 16):
    import torch
    ids = torch.randint(0, vocab, (1, SEQ), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, SEQ, dtype=torch.int64)
    if pad:
        mask[:, SEQ - pad:] = 0
    return ids, mask


def _text_model(model_cls, config, pad: int = 16):
    import torch
    torch.manual_seed(0)
    model = model_cls(config).eval()
    return _last_hidden_state(model), _text_inputs(config.vocab_size, pad), \
        ["input_ids", "attention_mask"]


@_heldout_text("distilbert")
def _distilbert():
    _transformers()
    from transformers import DistilBertConfig, DistilBertModel
    return _text_model(DistilBertModel, DistilBertConfig(n_layers=4, attn_implementation="eager"))


@_heldout_text("roberta")
def _roberta():
    _transformers()
    from transformers import RobertaConfig, RobertaModel
    return _text_model(RobertaModel, RobertaConfig(num_hidden_layers=4, vocab_size=50265,
                                                   attn_implementation="eager"))


@_heldout_text("albert")
def _albert():
    _transformers()
    from transformers import AlbertConfig, AlbertModel
    return _text_model(AlbertModel, AlbertConfig(num_hidden_layers=4, hidden_size=768,
                                                 num_attention_heads=12, intermediate_size=3072,
                                                 attn_implementation="eager"))


@_heldout_text("t5_encoder")
def _t5_encoder():
    """T5-small's encoder: RMSNorm without a bias, ReLU MLP, relative position buckets."""
    _transformers()
    from transformers import T5Config, T5EncoderModel
    return _text_model(T5EncoderModel, T5Config(num_layers=4, attn_implementation="eager"))


@_heldout_text("llama")
def _llama():
    """A small Llama-style decoder: RMSNorm, rotary embeddings, SiLU-gated MLP,
    grouped-query attention (8 heads, 2 key/value heads), causal, no padding."""
    _transformers()
    from transformers import LlamaConfig, LlamaModel
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                      max_position_embeddings=512, use_cache=False, attn_implementation="eager")
    return _text_model(LlamaModel, cfg, pad=0)


@_heldout_text("wav2vec2")
def _wav2vec2():
    """A wav2vec2-base-style audio encoder (conv feature extractor with group norm,
    positional conv, 4 transformer layers) on one second of 16 kHz audio."""
    import torch
    _transformers()
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(num_hidden_layers=4, attn_implementation="eager")).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_values):
            return self.model(input_values=input_values).last_hidden_state

    x = torch.randn(1, 16000, generator=torch.Generator().manual_seed(2))
    return Wrapped().eval(), (x,), ["input_values"]
