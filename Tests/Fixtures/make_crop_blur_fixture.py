#!/usr/bin/env python3
"""Writes crop_blur.json: a float CHW image (3, 12, 16) in [0, 1], torchvision's resized_crop of it for a few boxes
(back to 12 x 16, bilinear, antialias on) and its gaussian_blur for a few kernel sizes and sigmas, for the random
resized crop's and the Gaussian blur's tests.
Run once with torch and torchvision installed (torch 2.x / torchvision 0.2x made the committed file):
python3 Tests/Fixtures/make_crop_blur_fixture.py
"""
import json, os
import torch
import torchvision
import torchvision.transforms.functional as F

g = torch.Generator().manual_seed(7)
img = torch.rand(3, 12, 16, generator=g)
crops = [(0, 0, 12, 16), (2, 3, 6, 8), (5, 1, 7, 5), (0, 10, 12, 6), (4, 4, 3, 3)]
blurs = [(3, 0.5), (5, 1.0), (7, 2.0), (13, 1.7)]
out = dict(torch=torch.__version__, torchvision=torchvision.__version__, height=12, width=16, image=img.flatten().tolist(),
           crops=[dict(box=list(b), out=F.resized_crop(img, *b, [12, 16], antialias=True).flatten().tolist()) for b in crops],
           blurs=[dict(kernel=k, sigma=s, out=F.gaussian_blur(img, [k, k], [s, s]).flatten().tolist()) for k, s in blurs])
json.dump(out, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'crop_blur.json'), 'w'))
print('wrote crop_blur.json', torch.__version__, torchvision.__version__)
