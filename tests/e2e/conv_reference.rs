//! Convolution and pooling against PyTorch's own numbers (`conv.json` in
//! `$TORCH_REFERENCE_DIR`): outputs and the gradients of `sum(y * upstream)`, to 1e-5 relative.

use ndarray::{Array1, Array2, ArrayView2};
use serde_json::Value;
use tensor::{Conv2dShape, MaxPool2dShape};

use crate::reference::{assert_close, floats};

pub(crate) fn conv_json() -> Option<Value> {
    let dir = testkit::reference_dir()?;
    let path = dir.join("conv.json");
    Some(serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap())
}

fn count(case: &Value, key: &str) -> usize {
    case[key].as_u64().unwrap_or_else(|| panic!("{key} missing")) as usize
}

fn rows(values: Vec<f32>, n: usize) -> Array2<f32> {
    let width = values.len() / n;
    Array2::from_shape_vec((n, width), values).unwrap()
}

#[test]
fn conv2d_outputs_and_gradients_match_pytorch() {
    let Some(json) = conv_json() else { return };
    let cases = json["conv2d"].as_object().unwrap();
    assert_eq!(cases.len(), 4, "every reference case is exercised");
    for (name, case) in cases {
        let n = count(case, "n");
        let shape = Conv2dShape {
            in_channels: count(case, "in_channels"),
            height: count(case, "height"),
            width: count(case, "width"),
            out_channels: count(case, "out_channels"),
            kernel: count(case, "kernel"),
            stride: count(case, "stride"),
            padding: count(case, "padding"),
        };
        let x = rows(floats(&case["x"]), n);
        let w = Array2::from_shape_vec((shape.out_channels, shape.patch_len()), floats(&case["weight"])).unwrap();
        let bias = case.get("bias").map(|b| Array1::from(floats(b)));
        let mut cols = Vec::new();
        let mut y = Array2::zeros((n, shape.out_len()));
        tensor::conv2d(x.view(), w.view(), bias.as_ref().map(|b| b.view()), &shape, &mut cols, y.view_mut());
        assert_close(&format!("{name} y"), y.as_slice().unwrap(), &floats(&case["y"]));

        let upstream = rows(floats(&case["upstream"]), n);
        let (mut dw, mut dx) = (Array2::zeros(w.dim()), Array2::zeros(x.dim()));
        let mut db = Array1::zeros(shape.out_channels);
        let db_arg = bias.is_some().then(|| (db.view_mut(), 0.0));
        tensor::conv2d_backward(
            x.view(),
            w.view(),
            upstream.view(),
            &shape,
            &mut cols,
            (dw.view_mut(), 0.0),
            db_arg,
            Some((dx.view_mut(), 0.0)),
        );
        assert_close(&format!("{name} grad_weight"), dw.as_slice().unwrap(), &floats(&case["grad_weight"]));
        assert_close(&format!("{name} grad_x"), dx.as_slice().unwrap(), &floats(&case["grad_x"]));
        if let Some(want) = case.get("grad_bias") {
            assert_close(&format!("{name} grad_bias"), db.as_slice().unwrap(), &floats(want));
        }
    }
}

#[test]
fn max_pool2d_outputs_and_gradients_match_pytorch() {
    let Some(json) = conv_json() else { return };
    let cases = json["maxpool2d"].as_object().unwrap();
    assert_eq!(cases.len(), 4, "every reference case is exercised");
    for (name, case) in cases {
        let n = count(case, "n");
        let shape = MaxPool2dShape {
            channels: count(case, "channels"),
            height: count(case, "height"),
            width: count(case, "width"),
            kernel: count(case, "kernel"),
            stride: count(case, "stride"),
        };
        let x = rows(floats(&case["x"]), n);
        let mut y = Array2::zeros((n, shape.out_len()));
        let mut argmax = Vec::new();
        tensor::max_pool2d(x.view(), &shape, y.view_mut(), &mut argmax);
        assert_close(&format!("{name} y"), y.as_slice().unwrap(), &floats(&case["y"]));
        let upstream = rows(floats(&case["upstream"]), n);
        let mut dx = Array2::zeros(x.dim());
        tensor::max_pool2d_backward(upstream.view(), &argmax, 0.0, dx.view_mut());
        // Ties must route the whole gradient to the first maximum, exactly.
        let want = floats(&case["grad_x"]);
        assert_close(&format!("{name} grad_x"), dx.as_slice().unwrap(), &want);
        let view: ArrayView2<f32> = dx.view();
        assert_eq!(view.iter().filter(|&&v| v != 0.0).count(), want.iter().filter(|&&v| v != 0.0).count(), "{name}");
    }
}
