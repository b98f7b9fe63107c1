#!/usr/bin/env python3
"""The architecture zoo: one small random-weight model per hard case of issue 11.

Random weights prove that a rewrite is *valid* (pruned == masked, onnxruntime runs it, the checker
passes); the trained models next to this folder say whether it is *useful*. Every model has one
float input `x` with a dynamic batch dimension and one output `y`; BatchNorm statistics and
biases are random so that compensation bugs cannot hide behind zeros.

Writes models/zoo/*.onnx and models/zoo/manifest.json (input shape per model).
Deterministic: fixed seeds, TorchScript exporter. Usage: python3 models/make_zoo.py
(`--only NAME` adds one of zoo_vit, zoo_vit_fixed, zoo_norm_decomposed, zoo_rmsnorm_ops, zoo_groupnorm, zoo_unet_gn (with zoo_unet_gn_ts), zoo_se_view, zoo_cbam, zoo_coordatt,
zoo_poolformer (with zoo_poolformer_op) to an
existing zoo and its manifest).
"""
import json
import os

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "zoo")
OPSET = 17


def randomise_bn(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1.0 + 0.3 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=g))
        if isinstance(m, nn.GroupNorm):
            m.weight.data.copy_(1.0 + 0.3 * torch.randn(m.num_channels, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.num_channels, generator=g))
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def conv_bn(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- PaddleOCR DB
class SE(nn.Module):
    """PaddleOCR's SE: AvgPool → 1x1 reduce → ReLU → 1x1 expand → HardSigmoid → Mul."""

    def __init__(self, c, r=4):
        super().__init__()
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.expand = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.expand(F.relu(self.reduce(s)))
        return x * F.hardsigmoid(s)


class MBv3Block(nn.Module):
    def __init__(self, cin, exp, cout, k, s, se):
        super().__init__()
        self.expand = conv_bn(cin, exp, 1, act=nn.Hardswish)
        self.dw = conv_bn(exp, exp, k, s, groups=exp, act=nn.Hardswish)
        self.se = SE(exp) if se else nn.Identity()
        self.project = conv_bn(exp, cout, 1, act=None)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.res else y


class DBNet(nn.Module):
    """MobileNetV3 backbone → FPN (1x1 in-convs, nearest Resize + Add, 3x3 out-convs, upsample,
    Concat) → DB head (Conv-BN-ReLU, ConvTranspose-BN-ReLU, ConvTranspose, Sigmoid)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.Hardswish)
        self.s1 = nn.Sequential(MBv3Block(16, 32, 16, 3, 1, False), MBv3Block(16, 48, 24, 3, 2, False))
        self.s2 = nn.Sequential(MBv3Block(24, 72, 32, 5, 2, True), MBv3Block(32, 96, 32, 5, 1, True))
        self.s3 = nn.Sequential(MBv3Block(32, 120, 48, 3, 2, True), MBv3Block(48, 144, 48, 3, 1, True))
        self.ins = nn.ModuleList([nn.Conv2d(c, 32, 1, bias=False) for c in (24, 32, 48)])
        self.outs = nn.ModuleList([nn.Conv2d(32, 8, 3, padding=1, bias=False) for _ in range(3)])
        self.head = nn.Sequential(
            conv_bn(24, 8, 3),
            nn.ConvTranspose2d(8, 8, 2, 2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, x):
        c2 = self.s1(self.stem(x))
        c3 = self.s2(c2)
        c4 = self.s3(c3)
        i2, i3, i4 = (f(c) for f, c in zip(self.ins, (c2, c3, c4)))
        o3 = i3 + F.interpolate(i4, scale_factor=2.0, mode="nearest")
        o2 = i2 + F.interpolate(o3, scale_factor=2.0, mode="nearest")
        p4 = F.interpolate(self.outs[2](i4), scale_factor=4.0, mode="nearest")
        p3 = F.interpolate(self.outs[1](o3), scale_factor=2.0, mode="nearest")
        p2 = self.outs[0](o2)
        return self.head(torch.cat([p4, p3, p2], dim=1))


# --------------------------------------------------------------------------- ShuffleNet V2
def shuffle(x, g=2):
    b, c, h, w = x.shape
    return x.view(b, g, c // g, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        bin_ = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            conv_bn(bin_, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1)
        )

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.branch2(b)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return shuffle(out)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 24, 3, 2)
        self.units = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 96, 2))
        self.last = conv_bn(96, 128, 1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        y = self.last(self.units(self.stem(x)))
        return self.fc(y.mean(dim=(2, 3)))


# --------------------------------------------------------------------------- recurrent
class RNNNet(nn.Module):
    def __init__(self, cell, bidirectional=False, num_layers=1):
        super().__init__()
        # num_layers 2: torch writes each layer's zero initial state as a Slice of one
        # ConstantOfShape (the pruned layers read none: ONNX's default, zeros).
        self.rnn = cell(12, 32, batch_first=True, bidirectional=bidirectional, num_layers=num_layers)
        self.fc = nn.Linear(64 if bidirectional else 32, 10)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


# --------------------------------------------------------------------------- transformer (LN residual)
class RMSNorm(nn.Module):
    """RMSNorm as LLaMA-style code writes it (the TorchScript exporter has no `nn.RMSNorm`): Pow,
    ReduceMean, Add, Sqrt, Div, Mul in the ONNX graph."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, d, h, ff, norm=nn.LayerNorm):
        super().__init__()
        self.h, self.dh = h, d // h
        self.ln1, self.ln2 = norm(d), norm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        b, s, d = x.shape
        y = self.ln1(x)
        q, k, v = (f(y).view(b, s, self.h, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.dh**0.5, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class LNTransformer(nn.Module):
    """Token embedding (Gather) + learned positions → 2 pre-LN blocks → LN → mean → Linear."""

    def __init__(self, vocab=50, d=32, h=4, ff=64, seq=8, norms=(nn.LayerNorm, nn.LayerNorm)):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(1, seq, d))
        self.blocks = nn.Sequential(*(Block(d, h, ff, norm) for norm in norms))
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        y = self.emb(x) + self.pos
        return self.fc(self.ln(self.blocks(y)).mean(dim=1))


def norm_decomposed(out, manifest):
    """The LN transformer with its normalisations spelled out in primitive ops, as exports below
    opset 17 write them: LayerNorm as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add
    (block 0 and the final norm), and a hand-written RMSNorm (block 1). Norm parameters random."""
    torch.manual_seed(6)
    m = LNTransformer(norms=(nn.LayerNorm, RMSNorm)).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.LayerNorm, RMSNorm)):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
            if isinstance(mod, nn.LayerNorm):
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    export(m, torch.randint(0, 50, (2, 8)), "zoo_norm_decomposed", opset=14, out=out)
    manifest["zoo_norm_decomposed"] = {"x": [2, 8], "dtype": "int64", "high": 50}


def rmsnorm_ops(path):
    """A residual stream under ONNX's RMSNormalization (opset 23): before an FFN and after the
    residual Add, then a classifier. (tests/norms.rs renames the second to onnxruntime's
    SimplifiedLayerNormalization, its transformer optimizer's RMSNorm, which the checker does not
    know.)"""
    rng = np.random.default_rng(41)
    d, ff, s, i = 32, 64, 6, 12
    inits = []

    w = constants(rng, inits)

    mm = lambda x, wn, shape, y: [
        helper.make_node("MatMul", [x, w(wn, shape)], [y + ".mm"], name=y + ".matmul"),
        helper.make_node("Add", [y + ".mm", w(wn + ".b", [shape[1]], 0.1)], [y], name=y + ".bias"),
    ]
    nodes = mm("x", "embed", [i, d], "h0")
    nodes.append(helper.make_node("RMSNormalization", ["h0", w("rms.scale", [d], 0.2, 1.0)], ["n0"], name="rms", epsilon=1e-5))
    nodes += mm("n0", "up", [d, ff], "u")
    nodes.append(helper.make_node("Relu", ["u"], ["r"], name="relu"))
    nodes += mm("r", "down", [ff, d], "z")
    nodes.append(helper.make_node("Add", ["h0", "z"], ["h1"], name="residual"))
    nodes.append(helper.make_node("RMSNormalization", ["h1", w("rms2.scale", [d], 0.2, 1.0)], ["n1"], name="rms2", epsilon=1e-5))
    nodes += mm("n1", "head", [d, 10], "y")
    g = helper.make_graph(
        nodes, "rmsnorm_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", s, i])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", s, 10])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 23)], producer_name="onnx-emp make_zoo",
    )
    m.ir_version = 10
    onnx.save(m, path)
    return [2, s, i]


# --------------------------------------------------------------------------- computed reshape
class PatchNet(nn.Module):
    """CNN stem → patch Conv (stride 4) → x.reshape(x.shape[0], x.shape[1], -1) (a target built by
    Shape → Gather → Concat) → transpose → Linear on the channel axis → mean → Linear."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3)
        self.patch = nn.Conv2d(16, 24, 4, 4)
        self.mlp = nn.Linear(24, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        p = self.patch(self.stem(x))
        t = p.reshape(p.shape[0], p.shape[1], -1).transpose(1, 2)
        return self.fc(F.relu(self.mlp(t)).mean(dim=1))


# --------------------------------------------------------------------------- Gather / stepped Slice
class GatherSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = conv_bn(3, 16, 3)
        self.register_buffer("idx", torch.tensor([3, 0, 5, 7, 1, 2, 9, 8, 15, 14, 4, 6], dtype=torch.long))
        self.c2 = conv_bn(12, 16, 3)
        self.c3 = conv_bn(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.c1(x)
        y = self.c2(torch.index_select(y, 1, self.idx))  # Gather on the channel axis
        y = self.c3(y[:, 1::2])  # stepped Slice on the channel axis
        return self.fc(y.mean(dim=(2, 3)))


# --------------------------------------------------------------------------- grouped ConvTranspose
class GroupedDeconv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = conv_bn(3, 16, 3, 2)
        self.up = nn.ConvTranspose2d(16, 16, 2, 2, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.ConvTranspose2d(16, 32, 2, 2, groups=16)  # depthwise-like, multiplier 2
        self.c2 = conv_bn(32, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.dw(F.relu(self.bn(self.up(self.c1(x)))))
        return self.fc(self.c2(y).mean(dim=(2, 3)))


# --------------------------------------------------------------------------- QDQ
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = conv_bn(3, 16, 3), conv_bn(16, 32, 3, 2), conv_bn(32, 32, 3)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = self.c3(self.c2(self.c1(x)))
        # torchvision's head: GlobalAveragePool → Flatten → Gemm, which the quantizer wraps in
        # Quantize/DequantizeLinear pairs (Flatten → Q → DQ → Gemm).
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class GNNet(nn.Module):
    """A GroupNorm CNN (ResNet-GN / FCOS-head style): GroupNorm(8, 32) and (4, 32) around a
    residual block, GroupNorm(8, 64) after a strided conv, SiLU, pooled head."""

    def __init__(self):
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.c2, self.g2 = nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(4, 32)
        self.c3, self.g3 = nn.Conv2d(32, 64, 3, 2, 1), nn.GroupNorm(8, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.g1(self.c1(x)))
        x = F.relu(x + self.g2(self.c2(x)))
        x = F.silu(self.g3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def group_norm(out, manifest, img):
    """GNNet as the exporters write GroupNorm: TorchScript at opset 17 (Reshape [0, G, -1] →
    InstanceNormalization → Reshape to Shape(x) → Mul → Add), the dynamo exporter at opset 21
    (GroupNormalization, scale and bias per channel) and at opset 18 (the Reshape form)."""
    torch.manual_seed(15)
    m = randomise_bn(GNNet(), 15).eval()
    _, shape = export(m, img, "zoo_groupnorm", out=out)
    manifest["zoo_groupnorm"] = {"x": shape}
    path = os.path.join(out, "zoo_groupnorm_op.onnx")
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        m, (img,), path, dynamo=True, opset_version=21, input_names=["x"], output_names=["y"],
        dynamic_shapes=({0: batch},), external_data=False,
    )
    onnx.save(onnx.load(path), path)
    manifest["zoo_groupnorm_op"] = {"x": list(img.shape)}
    # The dynamo exporter at its default opset 18: the Reshape → InstanceNormalization form again,
    # the Reshapes' literal targets shared between GroupNorms of equal group counts.
    path = os.path.join(out, "zoo_groupnorm_dynamo.onnx")
    torch.onnx.export(
        m, (img,), path, dynamo=True, opset_version=18, input_names=["x"], output_names=["y"],
        dynamic_shapes=({0: batch},), external_data=False,
    )
    onnx.save(onnx.load(path), path)
    manifest["zoo_groupnorm_dynamo"] = {"x": list(img.shape)}


class PoolFormerNet(nn.Module):
    """A small PoolFormer (MetaFormer): a patch-embedding conv, then blocks whose token mixer is
    `pool(x) − x` and whose MLP is two 1 × 1 convs, each behind GroupNorm(1, C) (timm's
    GroupNorm1, a LayerNorm over the channels and the spatial axes) on the residual stream; a
    strided conv between two stages, a pooled head."""

    def __init__(self):
        super().__init__()

        def block(c):
            return nn.ModuleDict({
                "n1": nn.GroupNorm(1, c), "pool": nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                "n2": nn.GroupNorm(1, c), "fc1": nn.Conv2d(c, 2 * c, 1), "fc2": nn.Conv2d(2 * c, c, 1),
            })

        self.stem, self.s1 = nn.Conv2d(3, 32, 4, 4), block(32)
        self.down, self.s2 = nn.Conv2d(32, 64, 3, 2, 1), block(64)
        self.norm, self.fc = nn.GroupNorm(1, 64), nn.Linear(64, 10)

    def run(self, b, x):
        y = b["n1"](x)
        x = x + b["pool"](y) - y
        return x + b["fc2"](F.gelu(b["fc1"](b["n2"](x))))

    def forward(self, x):
        x = self.run(self.s2, self.down(self.run(self.s1, self.stem(x))))
        return self.fc(self.norm(x).mean((2, 3)))


def poolformer(out, manifest, img):
    """PoolFormerNet from TorchScript (opset 17: GroupNorm(1, C) as Reshape [0, 1, -1] →
    InstanceNormalization → Reshape to Shape(x) → Mul → Add) and from the dynamo exporter at
    opset 21 (GroupNormalization, num_groups 1, scale and bias per channel)."""
    torch.manual_seed(19)
    m = PoolFormerNet().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.GroupNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    _, shape = export(m, img, "zoo_poolformer", out=out)
    manifest["zoo_poolformer"] = {"x": shape}
    path = os.path.join(out, "zoo_poolformer_op.onnx")
    torch.onnx.export(
        m, (img,), path, dynamo=True, opset_version=21, input_names=["x"], output_names=["y"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False,
    )
    onnx.save(onnx.load(path), path)
    manifest["zoo_poolformer_op"] = {"x": list(img.shape)}


class UNetGN(nn.Module):
    """A small diffusion-style UNet: GroupNorm(8, C) + SiLU conv blocks, a max-pool down path, a
    self-attention block over the 16 × 16 tokens (GroupNorm → flatten → nn.MultiheadAttention →
    reshape back → residual Add), nearest upsampling and a skip Concat."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
            )

        self.d1, self.d2, self.u1 = block(3, 32), block(32, 64), block(64 + 32, 32)
        self.norm = nn.GroupNorm(8, 64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.out = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        a = self.d1(x)
        b = self.d2(F.max_pool2d(a, 2))
        n, c, h, w = b.shape
        t = self.norm(b).flatten(2).transpose(1, 2)
        y, _ = self.attn(t, t, t, need_weights=False)
        b = b + y.transpose(1, 2).reshape(n, c, h, w)
        u = F.interpolate(b, scale_factor=2.0, mode="nearest")
        return self.out(self.u1(torch.cat([u, a], 1)))


class SEView(nn.Module):
    """Squeeze-and-excitation as the SENet reference code and many MobileNetV3 ports write it:
    Linear layers on the pooled channels, `b, c = x.size()[:2]`, `.view(b, c)`, `.view(b, c, 1, 1)`,
    `x * y.expand_as(x)`. TorchScript reads every shape off `Shape(x)`."""

    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // r), nn.Linear(c // r, c)

    def forward(self, x):
        b, c, _, _ = x.size()
        y = F.adaptive_avg_pool2d(x, 1).view(b, c)
        y = torch.sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    """Two conv + BN + ReLU stages with an SE block each, a residual stage, a linear head."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.se1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), SEView(32)
        self.c2, self.b2, self.se2 = nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), SEView(64)
        self.c3, self.b3 = nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.se1(F.relu(self.b1(self.c1(x))))
        x = self.se2(F.relu(self.b2(self.c2(x))))
        x = F.relu(x + self.b3(self.c3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class CBAM(nn.Module):
    """CBAM as its reference code (Jongchan/attention-module) writes it, with adaptive pooling as
    most ports have it: a channel gate (a shared MLP on the average- and max-pooled channels,
    `expand_as(x)`), then a spatial gate (the
    channels' max and mean per pixel, `torch.max(x, 1)[0].unsqueeze(1)`, a 7 × 7 conv + BN to one
    map, `x * sigmoid(map)` broadcast over the channels)."""

    def __init__(self, c, r=4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c))
        self.spatial, self.bn = nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1)

    def forward(self, x):
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.bn(self.spatial(pooled)))


class AttentionNet(nn.Module):
    """Two conv + BN + ReLU stages (`widths`) with an attention block (`block(channels)`) each,
    optionally a 2 × 2 max-pool between them, a residual stage, a linear head."""

    def __init__(self, block, cin=3, widths=(32, 64), pool=False):
        super().__init__()
        a, b = widths
        self.pool = pool
        self.c1, self.b1, self.a1 = nn.Conv2d(cin, a, 3, padding=1), nn.BatchNorm2d(a), block(a)
        self.c2, self.b2, self.a2 = nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), block(b)
        self.c3, self.b3 = nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b)
        self.fc = nn.Linear(b, 10)

    def forward(self, x):
        x = self.a1(F.relu(self.b1(self.c1(x))))
        if self.pool:
            x = F.max_pool2d(x, 2)
        x = self.a2(F.relu(self.b2(self.c2(x))))
        x = F.relu(x + self.b3(self.c3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def CBAMNet():
    """AttentionNet with a CBAM block after each stage."""
    return AttentionNet(CBAM)


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al., 2021) as its reference code writes it, with the
    poolings as means: the rows and columns pooled, concatenated along the spatial axis, one
    1 × 1 conv + BN + HardSwish, split back at `h` (read off Shape), a gate per direction."""

    def __init__(self, c, r=8):
        super().__init__()
        m = max(8, c // r)
        self.conv, self.bn = nn.Conv2d(c, m, 1), nn.BatchNorm2d(m)
        self.conv_h, self.conv_w = nn.Conv2d(m, c, 1), nn.Conv2d(m, c, 1)

    def forward(self, x):
        _, _, h, w = x.size()
        xh, xw = x.mean(3, keepdim=True), x.mean(2, keepdim=True).permute(0, 1, 3, 2)
        y = F.hardswish(self.bn(self.conv(torch.cat([xh, xw], dim=2))))
        yh, yw = torch.split(y, [h, w], dim=2)
        return x * torch.sigmoid(self.conv_h(yh)) * torch.sigmoid(self.conv_w(yw.permute(0, 1, 3, 2)))


def CoordNet():
    """Two conv + BN + ReLU stages with coordinate attention each, a residual stage, a linear head."""
    return AttentionNet(CoordAtt)


def unet_gn(out, manifest, img):
    """UNetGN as the dynamo exporter writes it at opset 21, dynamic batch: GroupNormalization,
    the attention's reshapes as literals with a -1 batch (`[-1, 64, 256]`, `[-1, 64, 16, 16]`);
    and as TorchScript writes it (`zoo_unet_gn_ts`)."""
    torch.manual_seed(16)
    m = randomise_bn(UNetGN(), 16).eval()
    path = os.path.join(out, "zoo_unet_gn.onnx")
    torch.onnx.export(
        m, (img,), path, dynamo=True, opset_version=21, input_names=["x"], output_names=["y"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False,
    )
    onnx.save(onnx.load(path), path)
    manifest["zoo_unet_gn"] = {"x": list(img.shape)}
    # The same model as TorchScript writes it (opset 17): GroupNorm as Reshape →
    # InstanceNormalization → Reshape, and every reshape target read off `Shape`: the attention's
    # reshape back is `b.shape`'s `(n, c, h, w)`, read off the residual input it is added to.
    _, shape = export(m, img, "zoo_unet_gn_ts", out=out)
    manifest["zoo_unet_gn_ts"] = {"x": shape}


def export(model, x, name, opset=OPSET, fold=True, out=OUT, dynamic=True):
    model.eval()
    path = os.path.join(out, name + ".onnx")
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model, (x,), path, dynamic_axes=axes, dynamo=False,
        opset_version=opset, input_names=["x"], output_names=["y"], do_constant_folding=fold,
    )
    m = onnx.load(path)
    onnx.save(m, path)  # normalise: no doc strings from the exporter
    return path, list(x.shape)


def paddle_style(path):
    """Rewrite an export the way paddle2onnx writes PaddleOCR models: every Conv / ConvTranspose
    bias becomes Add(y, Reshape(bias, [1, -1, 1, 1])) with the shape in a Constant node
    (BatchNormalization stays unfused, HardSwish is x · HardSigmoid(x), Resize reads Concat-built
    scales: opset 11 without constant folding already gives those)."""
    m = onnx.load(path)
    g = m.graph
    nodes = []
    for k, n in enumerate(list(g.node)):
        nodes.append(n)
        if n.op_type not in ("Conv", "ConvTranspose") or len(n.input) < 3 or not n.input[2]:
            continue
        b = n.input[2]
        del n.input[2]
        out = n.output[0]
        n.output[0] = f"{out}_nobias"
        shape = numpy_helper.from_array(np.array([1, -1, 1, 1], dtype=np.int64))
        nodes.append(helper.make_node("Constant", [], [f"bias_shape_{k}"], value=shape))
        nodes.append(helper.make_node("Reshape", [b, f"bias_shape_{k}"], [f"bias_{k}"]))
        nodes.append(helper.make_node("Add", [f"{out}_nobias", f"bias_{k}"], [out]))
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, path)


def attention_4d(path):
    """Two layers of ONNX Attention (opset 23) in SDPA's 4-D form: Q/K/V [B, heads, S, dh] made
    by Reshape + Transpose; layer 1 grouped-query (4 query heads over 2 KV heads)."""
    rng = np.random.default_rng(23)
    d, h, dh, s = 32, 4, 8, 6
    nodes, inits = [], []

    def w(name, shape, scale=0.2):
        inits.append(numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name))
        return name

    def ints(name, v):
        inits.append(numpy_helper.from_array(np.array(v, dtype=np.int64), name))
        return name

    x = "x"
    for layer, kvh in enumerate((4, 2)):
        p = f"l{layer}"
        heads = {}
        for t, nh in (("q", h), ("k", kvh), ("v", kvh)):
            nodes.append(helper.make_node("MatMul", [x, w(f"{p}.{t}.w", [d, nh * dh])], [f"{p}.{t}.mm"]))
            nodes.append(helper.make_node("Add", [f"{p}.{t}.mm", w(f"{p}.{t}.b", [nh * dh], 0.1)], [f"{p}.{t}.lin"]))
            nodes.append(helper.make_node("Reshape", [f"{p}.{t}.lin", ints(f"{p}.{t}.shape", [0, 0, nh, dh])], [f"{p}.{t}.r"]))
            nodes.append(helper.make_node("Transpose", [f"{p}.{t}.r"], [f"{p}.{t}.4d"], perm=[0, 2, 1, 3]))
            heads[t] = f"{p}.{t}.4d"
        nodes.append(helper.make_node("Attention", [heads["q"], heads["k"], heads["v"]], [f"{p}.att"], name=f"{p}.attention"))
        nodes.append(helper.make_node("Transpose", [f"{p}.att"], [f"{p}.att.t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"{p}.att.t", ints(f"{p}.att.shape", [0, 0, d])], [f"{p}.att.r"]))
        nodes.append(helper.make_node("MatMul", [f"{p}.att.r", w(f"{p}.o.w", [d, d])], [f"{p}.o.mm"]))
        nodes.append(helper.make_node("Add", [f"{p}.o.mm", w(f"{p}.o.b", [d], 0.1)], [f"{p}.o"]))
        nodes.append(helper.make_node("Add", [x, f"{p}.o"], [f"{p}.out"]))
        x = f"{p}.out"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    g = helper.make_graph(
        nodes, "attention_4d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", s, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", s, d])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], producer_name="onnx-emp make_zoo")
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return [2, s, d]


def constants(rng, inits):
    """w(name, shape, scale, offset): a random float initializer appended to `inits`, its name."""

    def w(name, shape, scale=0.2, offset=0.0):
        inits.append(numpy_helper.from_array((offset + scale * rng.standard_normal(shape)).astype(np.float32), name))
        return name

    return w


def save_ms(g, path):
    """Save a graph of ONNX and com.microsoft ops (opset 17, IR 8, as onnxruntime's optimizer writes)."""
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="onnx-emp make_zoo",
    )
    m.ir_version = 8
    onnx.save(m, path)


def ms_fused_ffn(path):
    """Two FFN blocks as onnxruntime's transformer optimizer writes them: MatMul → com.microsoft
    BiasGelu (block 0) / FastGelu with bias (block 1) → MatMul → SkipLayerNormalization (residual,
    LayerNorm and the second bias fused)."""
    rng = np.random.default_rng(31)
    d, ff, s = 32, 64, 6
    inits = []

    w = constants(rng, inits)

    nodes, x = [], "x"
    for b, act in enumerate(("BiasGelu", "FastGelu")):
        p = f"ffn{b}"
        nodes.append(helper.make_node("MatMul", [x, w(f"{p}.w1", [d, ff])], [f"{p}.h"], name=f"{p}.up"))
        nodes.append(helper.make_node(act, [f"{p}.h", w(f"{p}.b1", [ff], 0.3)], [f"{p}.g"], name=f"{p}.act", domain="com.microsoft"))
        nodes.append(helper.make_node("MatMul", [f"{p}.g", w(f"{p}.w2", [ff, d])], [f"{p}.z"], name=f"{p}.down"))
        nodes.append(helper.make_node(
            "SkipLayerNormalization",
            [f"{p}.z", x, w(f"{p}.gamma", [d], 0.1, 1.0), w(f"{p}.beta", [d], 0.1), w(f"{p}.b2", [d], 0.1)],
            [f"{p}.out"], name=f"{p}.skipln", domain="com.microsoft", epsilon=1e-5,
        ))
        x = f"{p}.out"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    g = helper.make_graph(
        nodes, "ms_fused_ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", s, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", s, d])],
        inits,
    )
    save_ms(g, path)
    return [2, s, d]


def ms_bert(path):
    """A BERT encoder as onnxruntime's transformer optimizer leaves it, embeddings included: int64
    token ids → Cast → com.microsoft EmbedLayerNormalization (word and position tables summed and
    normalised: the residual stream's source) → two FFN blocks (MatMul → BiasGelu → MatMul →
    SkipLayerNormalization) → a MatMul + bias head. Returns the ids' shape."""
    rng = np.random.default_rng(37)
    vocab, d, ff, s = 50, 32, 64, 6
    inits = []

    w = constants(rng, inits)

    nodes = [
        helper.make_node("Cast", ["x"], ["ids"], name="ids_cast", to=TensorProto.INT32),
        helper.make_node(
            "EmbedLayerNormalization",
            ["ids", "", w("word", [vocab, d], 0.5), w("pos", [16, d], 0.5), "", w("emb.gamma", [d], 0.1, 1.0),
             w("emb.beta", [d], 0.1)],
            ["emb", "mask_index"], name="embed", domain="com.microsoft", epsilon=1e-12,
        ),
    ]
    x = "emb"
    for b in range(2):
        p = f"ffn{b}"
        nodes.append(helper.make_node("MatMul", [x, w(f"{p}.w1", [d, ff])], [f"{p}.h"], name=f"{p}.up"))
        nodes.append(helper.make_node("BiasGelu", [f"{p}.h", w(f"{p}.b1", [ff], 0.3)], [f"{p}.g"], name=f"{p}.act",
                                      domain="com.microsoft"))
        nodes.append(helper.make_node("MatMul", [f"{p}.g", w(f"{p}.w2", [ff, d])], [f"{p}.z"], name=f"{p}.down"))
        nodes.append(helper.make_node(
            "SkipLayerNormalization",
            [f"{p}.z", x, w(f"{p}.gamma", [d], 0.1, 1.0), w(f"{p}.beta", [d], 0.1), w(f"{p}.b2", [d], 0.1)],
            [f"{p}.out"], name=f"{p}.skipln", domain="com.microsoft", epsilon=1e-12,
        ))
        x = f"{p}.out"
    nodes.append(helper.make_node("MatMul", [x, w("head.w", [d, 4])], ["head.mm"], name="head"))
    nodes.append(helper.make_node("Add", ["head.mm", w("head.b", [4], 0.1)], ["y"], name="head.bias"))
    g = helper.make_graph(
        nodes, "ms_bert",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", s, 4])],
        inits,
    )
    save_ms(g, path)
    return [2, s]


def qdq(src, path, shape):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(5)
            self.data = iter([{"x": rng.standard_normal([1] + shape[1:]).astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(
        src, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    m = onnx.load(path)
    onnx.save(m, path)


def add(out, manifest, name, model, x, seed, opset=OPSET, fold=True):
    torch.manual_seed(seed)
    model = randomise_bn(model(), seed)
    _, shape = export(model, x, name, opset, fold, out)
    manifest[name] = {"x": shape}


def image_zoo(out, size):
    """The zoo's image models (the CNNs, the patch-reshape net, the attention blocks inside CNNs:
    squeeze-excite, CBAM, coordinate attention, PoolFormer) with size × size inputs instead of
    32 × 32, same seeds: `scripts/zoo.py --size 224` times them where compute, not fixed per-op
    cost, dominates. Returns their manifest."""
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    img = torch.randn(2, 3, size, size)
    manifest = {}
    image_models(out, manifest, img)
    # The attention blocks inside CNNs (the 32 × 32 zoo makes them after its image models).
    add(out, manifest, "zoo_se_view", SENet, img, 17)
    add(out, manifest, "zoo_cbam", CBAMNet, img, 18)
    add(out, manifest, "zoo_coordatt", CoordNet, img, 20)
    poolformer(out, manifest, img)
    return manifest


def image_models(out, manifest, img):
    # PaddleOCR's DB detector as paddle2onnx exports it (opset 11, BN unfused, bias Adds).
    add(out, manifest, "zoo_db_detector", DBNet, img, 1, opset=11, fold=False)
    paddle_style(os.path.join(out, "zoo_db_detector.onnx"))
    add(out, manifest, "zoo_shufflenet", ShuffleNet, img, 2)
    # The same net quantized (QDQ): Quantize/DequantizeLinear pairs inside the shuffles and chunks.
    qdq(os.path.join(out, "zoo_shufflenet.onnx"), os.path.join(out, "zoo_shufflenet_qdq.onnx"), list(img.shape))
    manifest["zoo_shufflenet_qdq"] = {"x": list(img.shape)}
    add(out, manifest, "zoo_patch_reshape", PatchNet, img, 6)
    add(out, manifest, "zoo_gather_slice", GatherSlice, img, 7)
    add(out, manifest, "zoo_grouped_convtranspose", GroupedDeconv, img, 8)
    group_norm(out, manifest, img)
    add(out, manifest, "zoo_cnn_fp32", SmallCNN, img, 9)
    shape = list(img.shape)
    qdq(os.path.join(out, "zoo_cnn_fp32.onnx"), os.path.join(out, "zoo_qdq.onnx"), shape)
    manifest["zoo_qdq"] = {"x": shape}
    os.remove(os.path.join(out, "zoo_cnn_fp32.onnx"))
    del manifest["zoo_cnn_fp32"]


def tiny_vit():
    """torchvision's VisionTransformer at zoo size: 32 × 32 images, 8 × 8 patches, d_model 32."""
    import torchvision

    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()


def vit_fixed(out, manifest):
    """zoo_vit's model as a fixed-shape export at opset 14 (batch 1, no dynamic axes): every
    LayerNorm spelled out in primitive ops, and Reshape targets folded to literals (`[1, 32, 16]`
    for the patches, the batch a literal 1)."""
    torch.manual_seed(13)
    m = tiny_vit()
    g = torch.Generator().manual_seed(14)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if p.dim() == 1 and p.shape[0] == 32 else 0.0))
    _, shape = export(m, torch.randn(1, 3, 32, 32), "zoo_vit_fixed", opset=14, out=out, dynamic=False)
    manifest["zoo_vit_fixed"] = {"x": shape}


def vit(out, manifest, img):
    """torchvision's VisionTransformer as its users export it (TorchScript exporter): the patch
    convolution's output reshaped by a target computed from the input's shape (`n`, and
    `h // p * w // p`), a class token expanded to the batch and concatenated, nn.MultiheadAttention
    (one fused in-projection, its reshapes built from the residual stream's width) and pre-LN
    blocks: the residual stream under LayerNormalization, end to end. LayerNorm parameters and
    biases are random, so that a wrong slice cannot hide behind ones and zeros."""
    torch.manual_seed(11)
    m = tiny_vit()
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        m.class_token.copy_(0.1 * torch.randn(m.class_token.shape, generator=g))
        # torchvision zero-initialises the head and every bias: a constant output proves nothing.
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    _, shape = export(m, img, "zoo_vit", out=out)
    manifest["zoo_vit"] = {"x": shape}


def main():
    import sys

    only = {
        "zoo_vit": lambda m: (torch.manual_seed(0), vit(OUT, m, torch.randn(2, 3, 32, 32))),
        "zoo_norm_decomposed": lambda m: norm_decomposed(OUT, m),
        "zoo_vit_fixed": lambda m: vit_fixed(OUT, m),
        "zoo_rmsnorm_ops": lambda m: m.update(zoo_rmsnorm_ops={"x": rmsnorm_ops(os.path.join(OUT, "zoo_rmsnorm_ops.onnx"))}),
        "zoo_lstm_stacked": lambda m: add(
            OUT, m, "zoo_lstm_stacked", lambda: RNNNet(nn.LSTM, num_layers=2), torch.randn(2, 8, 12), 11
        ),
        "zoo_groupnorm": lambda m: (torch.manual_seed(0), group_norm(OUT, m, torch.randn(2, 3, 32, 32))),
        "zoo_unet_gn": lambda m: (torch.manual_seed(0), unet_gn(OUT, m, torch.randn(2, 3, 32, 32))),
        "zoo_se_view": lambda m: (torch.manual_seed(0), add(OUT, m, "zoo_se_view", SENet, torch.randn(2, 3, 32, 32), 17)),
        "zoo_poolformer": lambda m: (torch.manual_seed(0), poolformer(OUT, m, torch.randn(2, 3, 32, 32))),
        "zoo_coordatt": lambda m: (torch.manual_seed(0), add(OUT, m, "zoo_coordatt", CoordNet, torch.randn(2, 3, 32, 32), 20)),
        "zoo_cbam": lambda m: (torch.manual_seed(0), add(OUT, m, "zoo_cbam", CBAMNet, torch.randn(2, 3, 32, 32), 18)),
        "zoo_ms_bert": lambda m: m.update(
            zoo_ms_bert={"x": ms_bert(os.path.join(OUT, "zoo_ms_bert.onnx")), "dtype": "int64", "high": 50}
        ),
    }
    if len(sys.argv) == 3 and sys.argv[1] == "--only" and sys.argv[2] in only:
        # Add the one model to an existing zoo, leaving the others as they are.
        name = sys.argv[2]
        path = os.path.join(OUT, "manifest.json")
        with open(path) as f:
            manifest = json.load(f)
        only[name](manifest)
        onnx.checker.check_model(onnx.load(os.path.join(OUT, name + ".onnx")), full_check=True)
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
        return
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 32)
    manifest = {}
    image_models(OUT, manifest, img)
    # Not in the 224 × 224 image zoo: attention over 112 × 112 tokens would need gigabytes.
    unet_gn(OUT, manifest, img)
    add(OUT, manifest, "zoo_se_view", SENet, img, 17)
    add(OUT, manifest, "zoo_cbam", CBAMNet, img, 18)
    add(OUT, manifest, "zoo_coordatt", CoordNet, img, 20)
    poolformer(OUT, manifest, img)
    add(OUT, manifest, "zoo_lstm", lambda: RNNNet(nn.LSTM), torch.randn(2, 8, 12), 3)
    add(OUT, manifest, "zoo_gru", lambda: RNNNet(nn.GRU), torch.randn(2, 8, 12), 4)
    # Bidirectional: Y [S, 2, B, H] → Transpose → Reshape [S, B, 2·H] (directions merged).
    add(OUT, manifest, "zoo_bilstm", lambda: RNNNet(nn.LSTM, bidirectional=True), torch.randn(2, 8, 12), 10)
    add(OUT, manifest, "zoo_lstm_stacked", lambda: RNNNet(nn.LSTM, num_layers=2), torch.randn(2, 8, 12), 11)
    tok = torch.randint(0, 50, (2, 8))
    torch.manual_seed(5)
    export(LNTransformer().eval(), tok, "zoo_layernorm_transformer")
    manifest["zoo_layernorm_transformer"] = {"x": [2, 8], "dtype": "int64", "high": 50}
    manifest["zoo_attention_4d"] = {"x": attention_4d(os.path.join(OUT, "zoo_attention_4d.onnx"))}
    manifest["zoo_ms_fused_ffn"] = {"x": ms_fused_ffn(os.path.join(OUT, "zoo_ms_fused_ffn.onnx"))}
    torch.manual_seed(0)
    vit(OUT, manifest, torch.randn(2, 3, 32, 32))
    norm_decomposed(OUT, manifest)
    vit_fixed(OUT, manifest)
    manifest["zoo_rmsnorm_ops"] = {"x": rmsnorm_ops(os.path.join(OUT, "zoo_rmsnorm_ops.onnx"))}
    manifest["zoo_ms_bert"] = {"x": ms_bert(os.path.join(OUT, "zoo_ms_bert.onnx")), "dtype": "int64", "high": 50}
    for name in manifest:
        onnx.checker.check_model(onnx.load(os.path.join(OUT, name + ".onnx")), full_check=True)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print("\n".join(f"{k}: {v}" for k, v in sorted(manifest.items())))


if __name__ == "__main__":
    main()
