"""Plain-PyTorch models for the GPU check and the cuda benchmark: a ResNet-50 and a
BERT-style encoder, seeded random weights, needing only torch (the GPU machines have no
torchvision or transformers)."""
from __future__ import annotations

import math


def _torch():
    import torch
    return torch


def resnet50(num_classes: int = 1000):
    torch = _torch()
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.c1 = nn.Conv2d(cin, width, 1, bias=False)
            self.b1 = nn.BatchNorm2d(width)
            self.c2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.b2 = nn.BatchNorm2d(width)
            self.c3 = nn.Conv2d(width, cout, 1, bias=False)
            self.b3 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(self.b2(self.c2(y)))
            y = self.b3(self.c3(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(blocks):
                    layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = width * 4
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(2048, num_classes)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1))

    torch.manual_seed(0)
    m = ResNet50().eval()
    with torch.no_grad():  # statistics that keep activations in range through 50 layers
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.2, 0.5)
    return m


def bert_encoder(layers: int = 12, hidden: int = 768, heads: int = 12, ffn: int = 3072,
                 explicit: bool = False):
    """BERT-base shaped: post-norm blocks of attention (softmax(QK^T/sqrt(d) + mask) V,
    through F.scaled_dot_product_attention, or written out with ``explicit``) and a GELU
    feed-forward; input [batch, seq, hidden] and an additive mask [batch, 1, 1, seq]."""
    torch = _torch()
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.o = nn.Linear(hidden, hidden)
            self.n1 = nn.LayerNorm(hidden)
            self.f1 = nn.Linear(hidden, ffn)
            self.f2 = nn.Linear(ffn, hidden)
            self.n2 = nn.LayerNorm(hidden)

        def forward(self, x, mask):
            b, s, _ = x.shape
            d = hidden // heads
            q, k, v = self.qkv(x).reshape(b, s, 3, heads, d).permute(2, 0, 3, 1, 4)
            if explicit:
                p = torch.softmax(q @ k.transpose(-1, -2) * (1.0 / math.sqrt(d)) + mask, dim=-1)
                a = p @ v
            else:
                a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = a.transpose(1, 2).reshape(b, s, hidden)
            x = self.n1(x + self.o(a))
            return self.n2(x + self.f2(nn.functional.gelu(self.f1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(layers))

        def forward(self, x, mask):
            for blk in self.blocks:
                x = blk(x, mask)
            return x

    torch.manual_seed(0)
    return Encoder().eval()


def inputs(name: str, batch: int, dtype="float32", seq: int = 128, hidden: int = 768, device="cpu"):
    torch = _torch()
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(1)
    if name == "resnet50":
        return (torch.randn(batch, 3, 224, 224, generator=g).to(device=device, dtype=dt),)
    x = torch.randn(batch, seq, hidden, generator=g)
    mask = torch.zeros(batch, 1, 1, seq)
    mask[:, :, :, seq - seq // 8:] = -10000.0  # the last eighth of each sequence is padding
    return x.to(device=device, dtype=dt), mask.to(device=device, dtype=dt)


def build(name: str, dtype="float32", device="cpu", **kw):
    torch = _torch()
    m = resnet50() if name == "resnet50" else bert_encoder(**kw)
    return m.to(device=device, dtype=getattr(torch, dtype))
