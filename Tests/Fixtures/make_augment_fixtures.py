#!/usr/bin/env python3
"""Generates augment.safetensors: torchvision colour adjustments and PyTorch area downsampling on fixed images.

Run once with torch and torchvision installed (see ../shared/ANCHORS.md); the output is committed:
    python3 Tests/Fixtures/make_augment_fixtures.py Tests/Fixtures/augment.safetensors
"""
import sys
import torch, torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from safetensors.torch import save_file

torch.manual_seed(7)
x = torch.rand(3, 16, 16)
out = {"x": x}
out["brightness_1.3"] = TF.adjust_brightness(x, 1.3)
out["contrast_0.6"] = TF.adjust_contrast(x, 0.6)
out["saturation_1.4"] = TF.adjust_saturation(x, 1.4)
out["saturation_0.3"] = TF.adjust_saturation(x, 0.3)
out["hue_0.2"] = TF.adjust_hue(x, 0.2)
out["hue_-0.35"] = TF.adjust_hue(x, -0.35)
# ColorJitter's composition: order saturation, brightness, hue, contrast
y = TF.adjust_saturation(x, 0.8)
y = TF.adjust_brightness(y, 1.1)
y = TF.adjust_hue(y, 0.05)
y = TF.adjust_contrast(y, 1.2)
out["jitter_s0.8_b1.1_h0.05_c1.2"] = y
big = torch.rand(1, 3, 32, 32)
out["big"] = big[0]
for f in [2, 4, 8, 16]:
    out[f"area_{f}"] = F.interpolate(big, scale_factor=1 / f, mode="area")[0]
dest = sys.argv[1] if len(sys.argv) > 1 else "augment.safetensors"
save_file({k: v.contiguous() for k, v in out.items()}, dest, metadata={"torch": torch.__version__})
print(f"wrote {len(out)} tensors to {dest}")
