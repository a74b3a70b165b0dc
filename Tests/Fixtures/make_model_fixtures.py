#!/usr/bin/env python3
"""Generates models.safetensors: whole-model, loss and optimizer fixtures computed by PyTorch.

Run once with torch and torchvision installed (see ../shared/ANCHORS.md); the output is committed and CI does
not need torch:
    python3 Tests/Fixtures/make_model_fixtures.py ../shared/anchors/pytorch Tests/Fixtures/models.safetensors
Contents (all float32 unless noted):
- gn.*: the paper's ResNet-GN (rbd_model.py) with planes 32/32/64/64 and 5 classes: state dict (gn.sd.*), an input
  batch (64 px, so layer4 GroupNorm groups hold 8 values), labels, feature map, logits, cross-entropy loss, and the gradient of every parameter (gn.grad.*).
- bn.*: a BasicBlock ResNet built from torchvision's own BasicBlock with torchvision's module names and BatchNorm,
  blocks 2/2/2/2 and planes 8/16/32/64 (narrow so the file stays small): state dict, then for train mode and eval
  mode the feature map, logits, loss, every gradient, and the running statistics after the step.
- kd.*: distillation loss terms and their gradients for every resize mode and L1/L2.
- mil.*: the attention-MIL head (features 16, 3 classes, a bag of 7): state dict, outputs, attention weights,
  random upstream gradients and the gradient of every parameter and of the bag.
- opt.*: cross-entropy losses of 5 steps of Adam, AdamW and SGD (Nesterov) on the gn model and batch.
Metadata: torchvision resnet18/resnet34 state_dict keys and shapes (JSON), for the naming tests.
"""
import json, sys
import torch, torch.nn as nn, torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, conv1x1
from safetensors.torch import save_file

sys.path.insert(0, sys.argv[1])
from rbd_model import ResNetGN  # noqa: E402

torch.manual_seed(2024)
out = {}

def put(name, t):
    out[name] = t.detach().contiguous().clone()

# ---- the paper's model (GroupNorm) ----
gn = ResNetGN(layers=(1, 1, 1, 1), planes=(32, 32, 64, 64), num_classes=5)
for k, v in gn.state_dict().items(): put(f"gn.sd.{k}", v)
x = torch.randn(2, 3, 64, 64)
y = torch.tensor([1, 4])
put("gn.x", x); put("gn.labels", y.to(torch.int64))
fmap, logits = gn(x)
loss = F.cross_entropy(logits, y)
loss.backward()
put("gn.fmap", fmap); put("gn.logits", logits); put("gn.loss", loss.reshape(1))
for k, p in gn.named_parameters(): put(f"gn.grad.{k}", p.grad)

# ---- torchvision-named BatchNorm ResNet (narrow) ----
class NarrowTorchvisionResNet(nn.Module):
    """torchvision.models.ResNet's structure and names with configurable widths."""
    def __init__(self, planes=(8, 16, 32, 64), layers=(2, 2, 2, 2), num_classes=5):
        super().__init__()
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(planes[0], layers[0], 1)
        self.layer2 = self._make(planes[1], layers[1], 2)
        self.layer3 = self._make(planes[2], layers[2], 2)
        self.layer4 = self._make(planes[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial affine parameters
                nn.init.uniform_(m.weight, 0.5, 1.5); nn.init.uniform_(m.bias, -0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.5, 1.5)
    def _make(self, planes, blocks, stride):
        ds = None
        if stride != 1 or self.inplanes != planes:
            ds = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        ls = [BasicBlock(self.inplanes, planes, stride, ds)]
        self.inplanes = planes
        ls += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*ls)
    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x, self.fc(torch.flatten(self.avgpool(x), 1))

bn = NarrowTorchvisionResNet()
for k, v in bn.state_dict().items(): put(f"bn.sd.{k}", v)
xb = torch.randn(3, 3, 64, 64)
yb = torch.tensor([0, 3, 2])
put("bn.x", xb); put("bn.labels", yb.to(torch.int64))
for mode in ["train", "eval"]:
    model = NarrowTorchvisionResNet()
    model.load_state_dict(bn.state_dict())
    model.train(mode == "train")
    fm, lg = model(xb)
    l = F.cross_entropy(lg, yb)
    l.backward()
    put(f"bn.{mode}.fmap", fm); put(f"bn.{mode}.logits", lg); put(f"bn.{mode}.loss", l.reshape(1))
    for k, p in model.named_parameters(): put(f"bn.{mode}.grad.{k}", p.grad)
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k: put(f"bn.{mode}.after.{k}", v)

# ---- distillation loss terms ----
s_logits, t_logits = torch.randn(4, 5) * 2, torch.randn(4, 5) * 2
s_map, t_map = torch.randn(4, 8, 2, 2), torch.randn(4, 8, 7, 7)
put("kd.s_logits", s_logits); put("kd.t_logits", t_logits); put("kd.s_map", s_map); put("kd.t_map", t_map)
T = 4.0
sl = s_logits.clone().requires_grad_(True)
kd = F.kl_div(F.log_softmax(sl / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
kd.backward()
put("kd.kl.loss", kd.reshape(1)); put("kd.kl.grad", sl.grad)
size = s_map.shape[-2:]
targets = {"maxpool": F.adaptive_max_pool2d(t_map, size),
           "bicubic": F.interpolate(t_map, size=size, mode="bicubic", align_corners=False)}
targets["maxpool+bicubic"] = (targets["maxpool"] + targets["bicubic"]) / 2
for mode, tgt in targets.items():
    for norm in ["l1", "l2"]:
        sm = s_map.clone().requires_grad_(True)
        l = F.l1_loss(sm, tgt) if norm == "l1" else F.mse_loss(sm, tgt)
        l.backward()
        put(f"kd.px.{mode}.{norm}.loss", l.reshape(1)); put(f"kd.px.{mode}.{norm}.grad", sm.grad)

# ---- optimizer steps ----
opts = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
}
for name, make in opts.items():
    model = ResNetGN(layers=(1, 1, 1, 1), planes=(32, 32, 64, 64), num_classes=5)
    model.load_state_dict(gn.state_dict())
    opt = make(model.parameters())
    losses = []
    for _ in range(5):
        opt.zero_grad()
        _, lg = model(x)
        l = F.cross_entropy(lg, y)
        l.backward()
        opt.step()
        losses.append(l.item())
    put(f"opt.{name}.losses", torch.tensor(losses))

# ---- attention-MIL head ----
class AttentionMIL(nn.Module):
    def __init__(self, f, classes):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(f, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.attention = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1))
        self.classifier = nn.Linear(64, classes)
        self.patch_classifier = nn.Linear(64, classes)
    def forward(self, x):
        h = self.mlp(x)
        a = torch.softmax(self.attention(h).squeeze(1), 0)
        return self.classifier((a[:, None] * h).sum(0)), self.patch_classifier(h), a

mil = AttentionMIL(16, 3)
for k, v in mil.state_dict().items(): put(f"mil.sd.{k}", v)
bag = torch.randn(7, 16).requires_grad_(True)
bl, pl, att = mil(bag)
g_bag, g_patch = torch.randn_like(bl), torch.randn_like(pl)
((bl * g_bag).sum() + (pl * g_patch).sum()).backward()
put("mil.bag", bag); put("mil.bag_logits", bl); put("mil.patch_logits", pl); put("mil.attention", att)
put("mil.g_bag", g_bag); put("mil.g_patch", g_patch); put("mil.dbag", bag.grad)
for k, p in mil.named_parameters(): put(f"mil.grad.{k}", p.grad)

meta = {}
for arch in ["resnet18", "resnet34"]:
    sd = getattr(torchvision.models, arch)(weights=None).state_dict()
    meta[arch] = json.dumps([[k, list(v.shape), str(v.dtype)] for k, v in sd.items()])
meta["torch"] = torch.__version__
dest = sys.argv[2] if len(sys.argv) > 2 else "models.safetensors"
save_file({k: (v.to(torch.float32) if v.dtype == torch.float64 else v) for k, v in out.items()}, dest, metadata=meta)
print(f"wrote {len(out)} tensors to {dest}")
