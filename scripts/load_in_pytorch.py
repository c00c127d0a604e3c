"""Loads a model saved by `mnist train --save` into the same PyTorch module and evaluates it.

    python3 scripts/load_in_pytorch.py model.safetensors [data/mnist]

Needs torch, numpy and safetensors. The widths come from the file's metadata; the module is
the usual MLP (nn.Linear layers fc1, fc2, ... with ReLU between them, and after the last layer
too when the metadata says output_relu=true). load_state_dict is strict: every name and shape
must match.
"""
import gzip
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file


class MLP(nn.Module):
    def __init__(self, widths, output_relu):
        super().__init__()
        self.output_relu = output_relu
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            setattr(self, f"fc{i + 1}", nn.Linear(a, b))
        self.depth = len(widths) - 1

    def forward(self, x):
        for i in range(self.depth):
            x = getattr(self, f"fc{i + 1}")(x)
            if i + 1 < self.depth or self.output_relu:
                x = F.relu(x)
        return x


def read_idx(folder, name):
    path = os.path.join(folder, name)
    raw = open(path, "rb").read() if os.path.exists(path) else gzip.open(path + ".gz").read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)


def main():
    path = sys.argv[1]
    folder = sys.argv[2] if len(sys.argv) > 2 else "data/mnist"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    widths = [int(w) for w in meta["widths"].split(",")]
    model = MLP(widths, meta.get("output_relu") == "true")
    print(model.load_state_dict(load_file(path)))
    x = torch.from_numpy(read_idx(folder, "t10k-images-idx3-ubyte").reshape(-1, widths[0]).astype(np.float32) / 255)
    y = torch.from_numpy(read_idx(folder, "t10k-labels-idx1-ubyte").astype(np.int64))
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"Test Accuracy: {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()
