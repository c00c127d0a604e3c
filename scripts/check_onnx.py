"""Checks an ONNX file written by `mnist export` with ONNX's own checker and runs it with ONNX
Runtime on a data set's test images (MNIST's layout, plain or .gz).

    python scripts/check_onnx.py MODEL.onnx DATA_DIR LOGITS_OUT

Prints the test accuracy as `mnist eval` prints it, and writes the logits as little-endian
float32 rows to LOGITS_OUT for the caller to compare with its own.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort

from mnist_idx import read_idx


def main():
    model_path, data_dir, logits_out = sys.argv[1:4]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}

    images = read_idx(data_dir, "t10k-images-idx3-ubyte")
    labels = read_idx(data_dir, "t10k-labels-idx1-ubyte")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"], session.get_inputs()
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"], session.get_outputs()
    logits, probabilities = session.run(None, {"input": x})
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax = shifted / shifted.sum(axis=1, keepdims=True)
    assert np.abs(probabilities - softmax).max() < 1e-6, "probabilities are not the softmax of the logits"

    np.ascontiguousarray(logits, dtype="<f4").tofile(logits_out)
    accuracy = (logits.argmax(axis=1) == labels).mean()
    print(f"Checked by onnx {onnx.__version__}, run by onnxruntime {ort.__version__}")
    print(f"Metadata: {meta}")
    print(f"Test Accuracy: {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()
