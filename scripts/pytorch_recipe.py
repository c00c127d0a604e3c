"""PyTorch's side of `cargo xtask bench`'s recipe table: `mnist train --recipe fast` written in
PyTorch as its user would, to time how soon it reaches 99% test accuracy on the same CPU.

LeNet-5 (conv 1->6 5x5 pad 2, max-pool 2, conv 6->16 5x5, max-pool 2, 400->120->84->10, ReLU
after all but the last), Adam with OneCycleLR peaking at 8e-3 over the run, cross-entropy with
label smoothing 0.05, batches of 64 reshuffled every epoch, 2 epochs; the test set is evaluated
after every epoch (outside the timed training).

    python scripts/pytorch_recipe.py --data DIR [--epochs 2] [--lr 8e-3] [--seed 0] [--threads 2]

Prints one JSON object: the seconds and test accuracy of every epoch.
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mnist_idx import read_idx


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=8e-3)
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    def images(name):
        return torch.from_numpy(read_idx(args.data, name).astype(np.float32) / 255.0).unsqueeze(1)

    x_train, x_test = images("train-images-idx3-ubyte"), images("t10k-images-idx3-ubyte")
    y_train = torch.from_numpy(read_idx(args.data, "train-labels-idx1-ubyte").astype(np.int64))
    y_test = torch.from_numpy(read_idx(args.data, "t10k-labels-idx1-ubyte").astype(np.int64))

    model = LeNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = (len(x_train) + args.batch_size - 1) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps)
    epochs = []
    for _ in range(args.epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(x_train))
        xs, ys = x_train[order], y_train[order]
        for i in range(0, len(xs), args.batch_size):
            loss = F.cross_entropy(
                model(xs[i : i + args.batch_size]), ys[i : i + args.batch_size], label_smoothing=args.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        seconds = time.perf_counter() - started
        model.eval()
        with torch.inference_mode():
            correct = sum(
                (model(x_test[i : i + 1000]).argmax(1) == y_test[i : i + 1000]).sum().item()
                for i in range(0, len(x_test), 1000)
            )
        epochs.append({"seconds": seconds, "test_accuracy": correct / len(x_test)})
    print(json.dumps({"torch": torch.__version__, "epochs": epochs}))


if __name__ == "__main__":
    main()
