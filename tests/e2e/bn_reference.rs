//! Average pooling and activations against PyTorch's own numbers (`bn.json` in
//! `$TORCH_REFERENCE_DIR`): outputs and the gradients of `sum(y * upstream)`, to 1e-5 relative.

use ndarray::Array2;
use serde_json::Value;
use tensor::{Activation, Pool2dShape};

use crate::reference::{assert_close, floats};

pub(crate) fn bn_json() -> Option<Value> {
    let dir = testkit::reference_dir()?;
    let path = dir.join("bn.json");
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
fn activations_and_their_gradients_match_pytorch() {
    let Some(json) = bn_json() else { return };
    let cases = json["activations"].as_object().unwrap();
    assert_eq!(cases.len(), 5, "every reference case is exercised");
    for (name, case) in cases {
        let f = match name.as_str() {
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "gelu" => Activation::Gelu,
            "gelu_tanh" => Activation::GeluTanh,
            "leaky_relu_0.01" => Activation::LeakyRelu(0.01),
            other => panic!("an activation this test does not know: {other}"),
        };
        let x = floats(&case["x"]);
        let mut y = vec![0.0; x.len()];
        tensor::activation(f, &x, &mut y);
        assert_close(&format!("{name} y"), &y, &floats(&case["y"]));
        let mut dx = vec![f32::NAN; x.len()];
        tensor::activation_backward(f, &x, &y, &floats(&case["upstream"]), 0.0, &mut dx);
        assert_close(&format!("{name} grad_x"), &dx, &floats(&case["grad_x"]));
    }
}

#[test]
fn average_pooling_and_its_gradient_match_pytorch() {
    let Some(json) = bn_json() else { return };
    let cases = json["avgpool2d"].as_object().unwrap();
    assert_eq!(cases.len(), 3, "every reference case is exercised");
    for (name, case) in cases {
        let n = count(case, "n");
        let shape = Pool2dShape {
            channels: count(case, "channels"),
            height: count(case, "height"),
            width: count(case, "width"),
            kernel: count(case, "kernel"),
            stride: count(case, "stride"),
        };
        let x = rows(floats(&case["x"]), n);
        let mut y = Array2::zeros((n, shape.out_len()));
        tensor::avg_pool2d(x.view(), &shape, y.view_mut());
        assert_close(&format!("{name} y"), y.as_slice().unwrap(), &floats(&case["y"]));
        let mut dx = Array2::from_elem(x.dim(), f32::NAN);
        tensor::avg_pool2d_backward(rows(floats(&case["upstream"]), n).view(), &shape, 0.0, dx.view_mut());
        assert_close(&format!("{name} grad_x"), dx.as_slice().unwrap(), &floats(&case["grad_x"]));
    }

    let case = &json["global_avgpool"]["case"];
    let (n, channels) = (count(case, "n"), count(case, "channels"));
    let x = rows(floats(&case["x"]), n);
    let mut y = Array2::zeros((n, channels));
    tensor::global_avg_pool(x.view(), channels, y.view_mut());
    assert_close("global y", y.as_slice().unwrap(), &floats(&case["y"]));
    let mut dx = Array2::from_elem(x.dim(), f32::NAN);
    tensor::global_avg_pool_backward(rows(floats(&case["upstream"]), n).view(), 0.0, dx.view_mut());
    assert_close("global grad_x", dx.as_slice().unwrap(), &floats(&case["grad_x"]));
}
