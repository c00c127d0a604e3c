"""Reading a data set's IDX files (MNIST's layout), plain or .gz, for the Python scripts here."""

import gzip
import os

import numpy as np


def read_idx(folder, name):
    """The array in `folder`/`name`, or in `name`.gz when the plain file is absent."""
    path = os.path.join(folder, name)
    raw = open(path, "rb").read() if os.path.exists(path) else gzip.open(path + ".gz").read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)
