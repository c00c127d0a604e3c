"""Loads a model saved by `mnist train --save` (or `--checkpoint`) into the same PyTorch module and
evaluates it on the test set.

    python3 scripts/load_in_pytorch.py model.safetensors [data/mnist]

Needs torch, numpy and safetensors. The module is rebuilt from the file's metadata: `layers` and
`input` for any model (conv, maxpool, avgpool, globalavgpool, batchnorm, relu, tanh, sigmoid,
gelu, leakyrelu, flatten, linear, dropout; parameters named conv1, conv2, ..., fc1, fc2, ... and
bn1, bn2, ..., with the running statistics of batch normalisation), or `widths` and `output_relu` for an MLP (nn.Linear layers fc1,
fc2, ... with ReLU between them, and after the last too when output_relu is true).
load_state_dict is strict: every name and shape must match. A training checkpoint's optimizer
state and best weights (`optimizer.*`, `best.*`) are left out.
"""
import re
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

from mnist_idx import read_idx


def split_layers(text):
    """The layers of a list like "conv(6,5,pad=2),relu,maxpool(2)", split at top-level commas."""
    return [part.strip() for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text) if part.strip()]


def parse_layer(text):
    match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", text)
    name, inner = match.group(1), match.group(2) or ""
    args = [a.strip() for a in inner.split(",") if a.strip()]
    positional = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    return name, positional, options


class Sequential(nn.Module):
    """The model a `layers` list describes, with PyTorch's layers under the file's names."""

    def __init__(self, layers, input_shape):
        super().__init__()
        self.steps = []
        channels, height, width = input_shape
        flat, convs, linears, norms = None, 0, 0, 0
        for text in split_layers(layers):
            name, args, options = parse_layer(text)
            if name == "conv":
                out, kernel = int(args[0]), int(args[1])
                stride, pad = int(options.get("stride", 1)), int(options.get("pad", 0))
                convs += 1
                step = nn.Conv2d(channels, out, kernel, stride, pad, bias=options.get("bias", "true") == "true")
                setattr(self, f"conv{convs}", step)
                channels = out
                height, width = (height + 2 * pad - kernel) // stride + 1, (width + 2 * pad - kernel) // stride + 1
            elif name == "maxpool":
                kernel = int(args[0])
                stride = int(args[1]) if len(args) > 1 else kernel
                step = nn.MaxPool2d(kernel, stride)
                height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            elif name == "avgpool":
                kernel = int(args[0])
                stride = int(args[1]) if len(args) > 1 else kernel
                step = nn.AvgPool2d(kernel, stride)
                height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            elif name == "globalavgpool":
                step = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
                flat, height, width = channels, 1, 1
            elif name == "relu":
                step = nn.ReLU()
            elif name == "tanh":
                step = nn.Tanh()
            elif name == "sigmoid":
                step = nn.Sigmoid()
            elif name == "gelu":
                step = nn.GELU(approximate="tanh" if args == ["tanh"] else "none")
            elif name == "leakyrelu":
                step = nn.LeakyReLU(float(args[0]) if args else 0.01)
            elif name == "flatten":
                step = nn.Flatten()
                flat = channels * height * width
            elif name == "linear":
                linears += 1
                step = nn.Linear(flat, int(args[0]))
                setattr(self, f"fc{linears}", step)
                flat = int(args[0])
            elif name == "batchnorm":
                norms += 1
                momentum, eps = float(options.get("momentum", 0.1)), float(options.get("eps", 1e-5))
                if flat is None:
                    step = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
                else:
                    step = nn.BatchNorm1d(flat, eps=eps, momentum=momentum)
                setattr(self, f"bn{norms}", step)
            elif name == "dropout":
                step = nn.Dropout(float(args[0]))
            else:
                raise ValueError(f"unknown layer {text!r}")
            if not any(step is m for m in self.children()):
                # Registered, so that eval() reaches it; it has no parameters to name.
                setattr(self, f"step{len(self.steps)}", step)
            self.steps.append(step)

    def forward(self, x):
        for step in self.steps:
            x = step(x)
        return x


def mlp_layers(widths, output_relu):
    layers = ["flatten"]
    for i, out in enumerate(widths[1:]):
        layers.append(f"linear({out})")
        if i + 2 < len(widths) or output_relu:
            layers.append("relu")
    return ",".join(layers)


def main():
    path = sys.argv[1]
    folder = sys.argv[2] if len(sys.argv) > 2 else "data/mnist"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    images = read_idx(folder, "t10k-images-idx3-ubyte")
    if "layers" in meta:
        layers = meta["layers"]
        input_shape = [int(d) for d in meta["input"].split(",")]
    else:
        widths = [int(w) for w in meta["widths"].split(",")]
        layers = mlp_layers(widths, meta.get("output_relu") == "true")
        input_shape = [1, 1, widths[0]]
    model = Sequential(layers, input_shape)
    state = {k: v for k, v in load_file(path).items() if not k.startswith(("optimizer.", "best."))}
    print(model.load_state_dict(state))
    model.eval()
    x = torch.from_numpy(images.astype(np.float32) / 255).reshape(-1, *input_shape)
    y = torch.from_numpy(read_idx(folder, "t10k-labels-idx1-ubyte").astype(np.int64))
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"Test Accuracy: {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()
