#!/usr/bin/env python3
"""Writes hed.json: RGB colours (H&E-like and others, in [0, 1]) with scikit-image's rgb2hed of them, hed2rgb of
that, and hed2rgb of a jittered HED (s * alpha + beta per channel), for the HED stain jitter's tests.
Run once with scikit-image installed (0.26.0 made the committed file): python3 Tests/Fixtures/make_hed_fixture.py
"""
import json, os
import numpy as np
from skimage.color import rgb2hed, hed2rgb

rgb = np.array([[[0.84, 0.52, 0.72], [0.45, 0.25, 0.60], [0.95, 0.80, 0.88], [0.30, 0.15, 0.45],
                 [1.0, 1.0, 1.0], [0.2, 0.8, 0.3], [0.0, 0.0, 0.0], [0.62, 0.38, 0.55]]])
hed = rgb2hed(rgb)
alpha = np.array([1.04, 0.97, 1.02]); beta = np.array([0.01, -0.02, 0.005])
out = dict(rgb=rgb[0].tolist(), hed=hed[0].tolist(), back=hed2rgb(hed)[0].tolist(), alpha=alpha.tolist(), beta=beta.tolist(),
           jittered=hed2rgb(hed * alpha + beta)[0].tolist())
json.dump(out, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'hed.json'), 'w'), indent=1)
print('wrote hed.json')
