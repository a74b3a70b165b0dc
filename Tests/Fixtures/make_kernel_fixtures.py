#!/usr/bin/env python3
"""Generates kernels.safetensors: inputs, outputs and gradients of every engine kernel, computed by PyTorch.

Run once with torch installed (see ../shared/ANCHORS.md); the output is committed and CI does not need torch:
    python3 Tests/Fixtures/make_kernel_fixtures.py Tests/Fixtures/kernels.safetensors
Each case stores its inputs, a random upstream gradient "dy", the forward output "y" and the gradient of
sum(y * dy) with respect to every input ("d" + name). Case parameters are in the metadata as JSON.
"""
import json, sys
import torch, torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(1234)
torch.set_default_dtype(torch.float64)  # compute in double, store float32
tensors, cases = {}, {}

def put(case, name, t):
    tensors[f"{case}.{name}"] = t.detach().to(torch.float32).contiguous()

def record(case, params, inputs, fn):
    """inputs: dict name -> tensor (float64). fn(**inputs) -> output tensor. Stores y, dy and all grads."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    for k, v in inputs.items():
        put(case, k, v)
        put(case, "d" + k, leaves[k].grad)
    put(case, "y", y)
    put(case, "dy", dy)
    cases[case] = params

# Conv2d: (n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, bias)
convs = {
    "conv.k3s1p1": (2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, True),
    "conv.k3s2p1": (2, 4, 9, 8, 5, 3, 3, 2, 2, 1, 1, False),
    "conv.k7s2p3": (2, 3, 16, 16, 8, 7, 7, 2, 2, 3, 3, False),
    "conv.k1s1p0": (3, 6, 5, 4, 7, 1, 1, 1, 1, 0, 0, True),
    "conv.k1s2p0": (2, 6, 7, 7, 4, 1, 1, 2, 2, 0, 0, False),
    "conv.k2x3s1x2p0x1": (2, 3, 6, 7, 4, 2, 3, 1, 2, 0, 1, True),
}
for name, (n, ci, h, w, co, kh, kw, sh, sw, ph, pw, bias) in convs.items():
    inputs = {"x": torch.randn(n, ci, h, w), "w": torch.randn(co, ci, kh, kw) * 0.3}
    if bias: inputs["b"] = torch.randn(co)
    record(name, dict(n=n, cin=ci, h=h, w=w, cout=co, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, bias=bias), inputs,
           lambda x, w, b=None, sh=sh, sw=sw, ph=ph, pw=pw: F.conv2d(x, w, b, (sh, sw), (ph, pw)))

# GroupNorm
for name, (n, c, h, w, g) in {"gn.g4": (2, 8, 5, 4, 4), "gn.g8": (3, 8, 3, 3, 8), "gn.g1": (2, 6, 4, 5, 1)}.items():
    record(name, dict(n=n, c=c, h=h, w=w, groups=g),
           {"x": torch.randn(n, c, h, w) * 2 + 0.5, "weight": torch.randn(c), "bias": torch.randn(c)},
           lambda x, weight, bias, g=g: F.group_norm(x, g, weight, bias, 1e-5))

# BatchNorm2d, training (batch statistics, running stats updated) and eval (running statistics)
n, c, h, w = 3, 4, 5, 5
for mode in ["train", "eval"]:
    rm0, rv0 = torch.randn(c) * 0.1, torch.rand(c) + 0.5
    rm, rv = rm0.clone(), rv0.clone()
    name = f"bn.{mode}"
    record(name, dict(n=n, c=c, h=h, w=w, training=mode == "train", momentum=0.1),
           {"x": torch.randn(n, c, h, w) * 1.5 + 0.3, "weight": torch.randn(c), "bias": torch.randn(c)},
           lambda x, weight, bias, rm=rm, rv=rv, mode=mode: F.batch_norm(x, rm, rv, weight, bias, mode == "train", 0.1, 1e-5))
    put(name, "running_mean_in", rm0); put(name, "running_var_in", rv0)
    put(name, "running_mean_out", rm); put(name, "running_var_out", rv)

record("relu", dict(count=60), {"x": torch.randn(60)}, lambda x: F.relu(x))
record("linear", dict(n=4, inf=7, outf=5), {"x": torch.randn(4, 7), "w": torch.randn(5, 7), "b": torch.randn(5)},
       lambda x, w, b: F.linear(x, w, b))
record("softmax", dict(rows=4, cols=6), {"x": torch.randn(4, 6) * 3}, lambda x: F.softmax(x, 1))
record("logsoftmax", dict(rows=4, cols=6), {"x": torch.randn(4, 6) * 3}, lambda x: F.log_softmax(x, 1))

# Max pool: (n, c, h, w, k, s, p, ceil)
for name, (n, c, h, w, k, s, p, ceil) in {"maxpool.k3s2p1": (2, 3, 9, 9, 3, 2, 1, False),
                                           "maxpool.k3s2p1.even": (2, 3, 8, 8, 3, 2, 1, False),
                                           "maxpool.k2s2ceil": (2, 2, 7, 7, 2, 2, 0, True),
                                           "maxpool.k3s3ceil": (1, 2, 8, 10, 3, 3, 1, True)}.items():
    record(name, dict(n=n, c=c, h=h, w=w, k=k, s=s, p=p, ceil=ceil), {"x": torch.randn(n, c, h, w)},
           lambda x, k=k, s=s, p=p, ceil=ceil: F.max_pool2d(x, k, s, p, ceil_mode=ceil))

record("gap", dict(n=2, c=3, h=5, w=4), {"x": torch.randn(2, 3, 5, 4)}, lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1))

# Adaptive pools and bicubic resize to several output sizes, down and up.
for (h, w, oh, ow) in [(7, 7, 2, 2), (7, 7, 3, 3), (7, 7, 5, 4), (4, 4, 1, 1), (5, 6, 9, 8), (14, 14, 7, 7)]:
    x = torch.randn(2, 3, h, w)
    p = dict(n=2, c=3, h=h, w=w, oh=oh, ow=ow)
    record(f"adamax.{h}x{w}to{oh}x{ow}", p, {"x": x}, lambda x, oh=oh, ow=ow: F.adaptive_max_pool2d(x, (oh, ow)))
    record(f"adaavg.{h}x{w}to{oh}x{ow}", p, {"x": x}, lambda x, oh=oh, ow=ow: F.adaptive_avg_pool2d(x, (oh, ow)))
    record(f"bicubic.{h}x{w}to{oh}x{ow}", p, {"x": x},
           lambda x, oh=oh, ow=ow: F.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False))

out = sys.argv[1] if len(sys.argv) > 1 else "kernels.safetensors"
save_file(tensors, out, metadata={"cases": json.dumps(cases, sort_keys=True), "torch": torch.__version__})
print(f"wrote {len(tensors)} tensors for {len(cases)} cases to {out}")
