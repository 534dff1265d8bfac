"""Load swav-convert's outputs with the real frameworks and check the model they give.

usage: python check_converted.py DIR   (DIR holds swav.pth, swav.pdparams, swav_torch.safetensors,
made by scripts/check-with-python.sh; needs torch, paddle, safetensors)
- torch.load(weights_only=True) of the .pth, load_state_dict(strict=True) into the fixtures'
  SwAV ResNet, eval outputs against tests/fixtures/reference_tiny.safetensors;
- paddle.load of the .pdparams, set_state_dict into the PASSL-layout Paddle model (all keys
  matched), eval outputs against the paddle.* references;
- safetensors.torch.load_file of the torch-layout safetensors, strict load, same outputs.
"""
import os
import sys
import warnings

import numpy as np

warnings.simplefilter("ignore")
here = os.path.dirname(os.path.abspath(__file__))
fix = os.path.join(here, "..", "tests", "fixtures")
sys.path.insert(0, os.path.join(fix, "generate"))
import models  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from safetensors.torch import load_file as load_torch  # noqa: E402

d = sys.argv[1]
ref = load_file(os.path.join(fix, "reference_tiny.safetensors"))
cfg = dict(layers=[3, 4, 6, 3], width=4, hid=32, out=16, k=30)
worst = 0.0


def compare(tag, outs, names):
    global worst
    for o, n in zip(outs, names):
        diff = float(np.abs(np.asarray(o) - ref[n]).max())
        worst = max(worst, diff)
        print(f"{tag:28s} {n:18s} max |diff| {diff:.2e}")


SwAVResNet, _, _ = models.torch_models()
for tag, sd in (("torch.load(.pth)", torch.load(os.path.join(d, "swav.pth"), weights_only=True)),
                ("safetensors (torch layout)", load_torch(os.path.join(d, "swav_torch.safetensors")))):
    m = SwAVResNet(cfg["layers"], width_per_group=cfg["width"], hidden_mlp=cfg["hid"], output_dim=cfg["out"], nmb_prototypes=cfg["k"])
    m.load_state_dict(sd, strict=True)
    m.eval()
    with torch.no_grad():
        f = m.backbone(torch.from_numpy(ref["images"]))
        z, s = m.head(f)
    compare(tag, (f, z, s), ("features", "embedding", "scores"))

import paddle  # noqa: E402

PSwAV = models.paddle_models()
pm = PSwAV(cfg["layers"], cfg["width"], cfg["hid"], cfg["out"], cfg["k"])
state = paddle.load(os.path.join(d, "swav.pdparams"))
mismatch = set(pm.state_dict().keys()) ^ set(state.keys())
assert not mismatch, f"paddle keys differ: {sorted(mismatch)[:5]}"
pm.set_state_dict(state)
pm.eval()
with paddle.no_grad():
    pf, pz, ps = pm.embed(paddle.to_tensor(ref["images"]))
compare("paddle.load(.pdparams)", (pf.numpy(), pz.numpy(), ps.numpy()), ("paddle.features", "paddle.embedding", "paddle.scores"))
print(f"worst max |diff| {worst:.2e} (tolerance 1e-5)")
sys.exit(0 if worst < 1e-5 else 1)
