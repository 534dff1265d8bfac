"""The Python peer of `swav-train bench-data`: facebookresearch/swav's MultiCropDataset
transforms (torchvision + Pillow), one process, one thread. Prints images/s.

usage: python peer_multicrop.py FOLDER SECONDS
"""
import os
import random
import sys
import time

import numpy as np
import torch
import torchvision.transforms as transforms
from PIL import Image, ImageFilter

torch.set_num_threads(1)


class PILRandomGaussianBlur(object):  # facebookresearch/swav src/multicropdataset.py
    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if not np.random.rand() <= self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


def get_color_distortion(s=1.0):
    color_jitter = transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    rnd_color_jitter = transforms.RandomApply([color_jitter], p=0.8)
    rnd_gray = transforms.RandomGrayscale(p=0.2)
    return transforms.Compose([rnd_color_jitter, rnd_gray])


size_crops, nmb_crops, min_scale, max_scale = [224, 96], [2, 6], [0.14, 0.05], [1.0, 0.14]
color_transform = [get_color_distortion(), PILRandomGaussianBlur()]
mean, std = [0.485, 0.456, 0.406], [0.228, 0.224, 0.225]
trans = []
for i in range(len(size_crops)):
    rrc = transforms.RandomResizedCrop(size_crops[i], scale=(min_scale[i], max_scale[i]))
    trans.extend([transforms.Compose([rrc, transforms.RandomHorizontalFlip(p=0.5), transforms.Compose(color_transform),
                                      transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])] * nmb_crops[i])

folder, seconds = sys.argv[1], float(sys.argv[2])
files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs if f.lower().endswith((".jpg", ".jpeg", ".png")))
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    for f in files:
        with open(f, "rb") as fh:
            img = Image.open(fh).convert("RGB")
        crops = [t(img) for t in trans]
        n += 1
        if time.perf_counter() - t0 >= seconds:
            break
dt = time.perf_counter() - t0
print(f"{n / dt:.2f}")
