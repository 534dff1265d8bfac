"""The peer: facebookresearch/swav main_swav.py's training loop in PyTorch (SGD + LARC, warmup +
cosine per iteration, prototypes normalised and frozen, Sinkhorn-Knopp, swapped prediction, queue),
with its multi-crop transforms, on an image folder, for a small ResNet (tests/fixtures/generate/models.py).

Used by scripts/gpu-check.sh (fixed-shape steps, images/s) and to compare training runs with
swav-train on the same recipe: it writes the trained model as a .pth that `swav-lincls knn
--pretrained` reads.

python scripts/peer_swav_train.py --data DIR/train --out model.pth [--epochs 4 --depth 18 --width 16 ...]
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image, ImageFilter
from torchvision.datasets import ImageFolder

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "generate"))
import models  # noqa: E402


class PILRandomGaussianBlur:
    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if np.random.rand() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class MultiCrop(ImageFolder):
    def __init__(self, root, size_crops, nmb_crops, min_scale, max_scale, color_p=0.8, s=1.0, jitter=None):
        super().__init__(root)
        jitter = jitter or [0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s]
        color = T.Compose([T.RandomApply([T.ColorJitter(*jitter)], p=color_p),
                           T.RandomGrayscale(p=0.2 if color_p else 0.0)])
        norm = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.228, 0.224, 0.225])
        self.trans = []
        for s, n, lo, hi in zip(size_crops, nmb_crops, min_scale, max_scale):
            t = T.Compose([T.RandomResizedCrop(s, scale=(lo, hi)), T.RandomHorizontalFlip(p=0.5), color,
                           PILRandomGaussianBlur(), T.ToTensor(), norm])
            self.trans += [t] * n

    def __getitem__(self, i):
        img = self.loader(self.samples[i][0])
        return [t(img) for t in self.trans]


def sinkhorn(out, eps, iters):
    Q = torch.exp(out / eps).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= Q.sum()
    for _ in range(iters):
        Q /= Q.sum(dim=1, keepdim=True)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def larc_step(opt, params, wd, trust=0.001, eps=1e-8):
    # apex LARC(clip=False): the inner SGD has weight_decay 0 during the step.
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            pn, gn = torch.norm(p.data), torch.norm(p.grad.data)
            if pn != 0 and gn != 0:
                ratio = trust * pn / (gn + pn * wd + eps)
                p.grad.data += wd * p.data
                p.grad.data *= ratio
    opt.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--feat", type=int, default=32)
    ap.add_argument("--prototypes", type=int, default=30)
    ap.add_argument("--size-crops", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--nmb-crops", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--min-scale", type=float, nargs="+", default=[0.3, 0.1])
    ap.add_argument("--max-scale", type=float, nargs="+", default=[1.0, 0.3])
    ap.add_argument("--base-lr", type=float, default=0.6)
    ap.add_argument("--final-lr", type=float, default=0.0006)
    ap.add_argument("--start-warmup", type=float, default=0.06)
    ap.add_argument("--warmup-epochs", type=float, default=2)
    ap.add_argument("--wd", type=float, default=1e-6)
    ap.add_argument("--trust", type=float, default=0.001)
    ap.add_argument("--color-p", type=float, default=0.8)
    ap.add_argument("--color-strength", type=float, default=1.0)
    ap.add_argument("--jitter", type=float, nargs=4, help="brightness contrast saturation hue (default: strength x 0.8 0.8 0.8 0.2)")
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--freeze", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=0, help="time this many fixed-shape steps on random crops instead")
    ap.add_argument("--no-tf32", action="store_true",
                    help="plain f32 convolutions on CUDA (PyTorch's default lets cuDNN use TF32 for them)")
    a = ap.parse_args()
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    SwAVResNet, Bottleneck, BasicBlock = models.torch_models()
    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[a.depth]
    block = BasicBlock if a.depth < 50 else Bottleneck
    model = SwAVResNet(layers, block, width_per_group=a.width, hidden_mlp=a.hidden, output_dim=a.feat,
                       nmb_prototypes=a.prototypes).to(a.device)
    for m in model.modules():  # main_swav's resnet50.py
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    opt = torch.optim.SGD(model.parameters(), lr=a.base_lr, momentum=0.9, weight_decay=0)
    params = list(model.parameters())

    def forward(crops):
        idx = torch.cumsum(torch.unique_consecutive(torch.tensor([c.shape[-1] for c in crops]), return_counts=True)[1], 0)
        start, feats = 0, []
        for end in idx:
            feats.append(model.backbone(torch.cat(crops[start:end]).to(a.device, non_blocking=True)))
            start = end
        return model.head(torch.cat(feats))

    def step(crops, lr, it):
        with torch.no_grad():
            w = model.prototypes.weight.data.clone()
            model.prototypes.weight.copy_(nn.functional.normalize(w, dim=1, p=2))
        emb, out = forward(crops)
        bs = crops[0].shape[0]
        loss = 0
        for i, c in enumerate([0, 1]):
            with torch.no_grad():
                q = sinkhorn(out[bs * c:bs * (c + 1)].detach(), a.epsilon, 3)
            sub = 0
            for v in np.delete(np.arange(len(crops)), c):
                x = out[bs * v:bs * (v + 1)] / a.temperature
                sub -= torch.mean(torch.sum(q * nn.functional.log_softmax(x, dim=1), dim=1))
            loss += sub / (len(crops) - 1)
        loss /= 2
        opt.zero_grad()
        loss.backward()
        if it < a.freeze:
            model.prototypes.weight.grad = None
        for g in opt.param_groups:
            g["lr"] = lr
        larc_step(opt, params, a.wd, a.trust)
        return loss.item()

    model.train()
    if a.steps:
        # On the device already, as swav-train's bench-step has them: both time the step, not the copy.
        crops = [torch.randn(a.batch_size, 3, s, s, device=a.device)
                 for s, n in zip(a.size_crops, a.nmb_crops) for _ in range(n)]
        step(crops, 0.1, 10**9)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(a.steps):
            step(crops, 0.1, 10**9)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(json.dumps({"peer": "pytorch", "steps": a.steps, "seconds": dt,
                          "images_per_second": a.steps * a.batch_size / dt}))
        return
    ds = MultiCrop(a.data, a.size_crops, a.nmb_crops, a.min_scale, a.max_scale, a.color_p, a.color_strength, a.jitter)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, drop_last=True,
                                         num_workers=a.workers, pin_memory=a.device.startswith("cuda"))
    n = len(loader)
    warm = int(round(a.warmup_epochs * n))
    sched = list(np.linspace(a.start_warmup, a.base_lr, warm)) + [
        a.final_lr + 0.5 * (a.base_lr - a.final_lr) * (1 + math.cos(math.pi * t / (n * a.epochs - warm)))
        for t in range(n * a.epochs - warm)]
    it = 0
    for epoch in range(a.epochs):
        t0, losses = time.perf_counter(), []
        for crops in loader:
            losses.append(step(crops, sched[it], it))
            it += 1
        print(json.dumps({"epoch": epoch, "loss": float(np.mean(losses)),
                          "images_per_second": n * a.batch_size / (time.perf_counter() - t0)}), flush=True)
    if a.out:
        sd = {k: v for k, v in model.state_dict().items()}
        torch.save(sd, a.out)


if __name__ == "__main__":
    main()
