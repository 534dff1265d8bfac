"""The Python peer of `swav-convert IN OUT.safetensors`: what users run today.

paddle.load (pickle formats) or torch.load(weights_only=True) (PyTorch formats), flatten the
state_dict, numpy, safetensors.numpy.save_file. Prints the seconds spent in load+save (imports
excluded) on stdout.
"""
import sys
import time
import warnings

warnings.simplefilter("ignore")
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    is_torch = f.read(4) == b"PK\x03\x04" or src.endswith((".pth", ".pt", ".tar"))
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

if is_torch:
    import torch  # noqa: E402
else:
    import paddle  # noqa: E402

t0 = time.perf_counter()
obj = torch.load(src, weights_only=True, map_location="cpu") if is_torch else paddle.load(src)
if isinstance(obj, dict) and "state_dict" in obj:
    obj = obj["state_dict"]
out = {}
for k, v in obj.items():
    if is_torch:
        out[k] = v.detach().cpu().contiguous().numpy() if v.dtype != torch.bfloat16 else v.float().numpy()
    else:
        out[k] = np.ascontiguousarray(np.asarray(v))
save_file(out, dst)
print(f"{time.perf_counter() - t0:.3f}")
