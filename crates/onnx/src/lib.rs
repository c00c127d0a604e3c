//! Writes the project's models as ONNX files, which ONNX Runtime (Python, C#, Java, the
//! browser's onnxruntime-web, phones) and every other ONNX reader can run.
//!
//! A file from [`export`] holds one graph at opset [`OPSET`] (IR version [`IR_VERSION`]):
//!
//! - input `input`: `[N, C, H, W]` float32 pixels in `0..1` (the byte divided by 255, as the
//!   project scales them), with a symbolic batch dimension `N`;
//! - outputs `logits` (`[N, classes]`) and `probabilities`, their softmax;
//! - the parameters and batch normalisation's running statistics as initializers under their
//!   `state_dict` names (`fc1.weight`, `bn1.running_mean`);
//! - the caller's description of the model (architecture, classes, test accuracy) as
//!   `metadata_props`.
//!
//! Every layer a [`nn::SequentialConfig`] can hold maps onto standard operators: `Conv`,
//! `MaxPool`, `AveragePool`, `GlobalAveragePool`, `Flatten`, `Gemm`,
//! `BatchNormalization` (in inference mode, with the running statistics), `Relu`, `Tanh`,
//! `Sigmoid`, `LeakyRelu`, and GELU written out with `Erf` or `Tanh` (opset 17 has no `Gelu`).
//! Dropout, which only acts while training, leaves no node.
//!
//! ```
//! use rand::SeedableRng;
//! let config = nn::SequentialConfig::parse("conv(4,3),relu,flatten,linear(10)", [1, 8, 8]).unwrap();
//! let model = nn::Sequential::new(&config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
//! let bytes = onnx::export(&model, &[("classes".into(), "10".into())]);
//! let ops = onnx::operators(&bytes).unwrap();
//! assert_eq!(ops, ["Conv", "Relu", "Flatten", "Gemm", "Softmax"]);
//! ```

// Generated code, as prost writes it.
#[allow(clippy::all, clippy::pedantic, dead_code)]
mod proto;

use std::collections::BTreeSet;

use nn::{Layer, Model, Sequential, StateDict};
use prost::Message;
use proto::attribute_proto::AttributeType;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{Dimension, dimension};
use proto::type_proto;
use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The operator set the files use: ONNX 1.12's, which every maintained runtime reads.
pub const OPSET: i64 = 17;
/// The file format's version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// The graph's input.
pub const INPUT: &str = "input";
/// The graph's first output: one score per class.
pub const LOGITS: &str = "logits";
/// The graph's second output: the softmax of the logits.
pub const PROBABILITIES: &str = "probabilities";
/// The name of the batch dimension of the input and outputs.
pub const BATCH: &str = "N";

/// The ONNX file of `model`, with `metadata` as the model's `metadata_props` (key, value).
pub fn export(model: &Sequential, metadata: &[(String, String)]) -> Vec<u8> {
    let config = model.config();
    let state = model.state_dict();
    let mut graph = Graph::new(&state);
    let mut x = INPUT.to_owned();
    for (layer, scope) in config.layers.iter().zip(config.scopes()) {
        let scope = scope.as_deref().unwrap_or_default();
        x = graph.layer(*layer, scope, x);
    }
    // Every model has a layer with parameters, so a node, and dropout adds none: the last
    // node wrote the logits.
    let last = graph.nodes.last_mut().expect("a model has a layer with parameters");
    debug_assert_eq!(last.output, [x]);
    last.output = vec![LOGITS.to_owned()];
    graph.node_named("Softmax", vec![LOGITS.to_owned()], vec![int("axis", 1)], PROBABILITIES);

    let [c, h, w] = config.input;
    let classes = model.classes();
    let graph = GraphProto {
        name: Some("model".into()),
        node: graph.nodes,
        initializer: graph.initializers,
        input: vec![value_info(INPUT, &[None, Some(c), Some(h), Some(w)])],
        output: vec![value_info(LOGITS, &[None, Some(classes)]), value_info(PROBABILITIES, &[None, Some(classes)])],
        doc_string: Some(format!("{}: {config}", model.describe())),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some(env!("CARGO_PKG_NAME").into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The operators of an ONNX file's graph, in order: a summary for people and tests.
///
/// # Errors
/// Bytes that are not an ONNX model.
pub fn operators(bytes: &[u8]) -> Result<Vec<String>, prost::DecodeError> {
    let model = ModelProto::decode(bytes)?;
    Ok(model.graph.unwrap_or_default().node.into_iter().map(|n| n.op_type.unwrap_or_default()).collect())
}

/// The nodes and initializers of the graph being written.
struct Graph<'a> {
    state: &'a StateDict,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The names of the initializers, so that each constant is written once.
    named: BTreeSet<String>,
}

impl<'a> Graph<'a> {
    fn new(state: &'a StateDict) -> Self {
        Self { state, nodes: Vec::new(), initializers: Vec::new(), named: BTreeSet::new() }
    }

    /// Adds the nodes of one layer reading `x`; returns the name of its output.
    fn layer(&mut self, layer: Layer, scope: &str, x: String) -> String {
        let param = |leaf: &str| format!("{scope}.{leaf}");
        match layer {
            Layer::Conv2d { kernel, stride, padding, bias, .. } => {
                let mut inputs = vec![x, self.tensor(param("weight"))];
                if bias {
                    inputs.push(self.tensor(param("bias")));
                }
                let (k, s, p) = (to_i64(kernel), to_i64(stride), to_i64(padding));
                let attributes = vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s]), ints("pads", &[p; 4])];
                self.node("Conv", inputs, attributes)
            }
            Layer::MaxPool2d { kernel, stride } => self.pool("MaxPool", kernel, stride, x),
            Layer::AvgPool2d { kernel, stride } => self.pool("AveragePool", kernel, stride, x),
            Layer::GlobalAvgPool => {
                let pooled = self.node("GlobalAveragePool", vec![x], vec![]);
                self.node("Flatten", vec![pooled], vec![int("axis", 1)])
            }
            Layer::Flatten => self.node("Flatten", vec![x], vec![int("axis", 1)]),
            Layer::Linear { .. } => {
                let inputs = vec![x, self.tensor(param("weight")), self.tensor(param("bias"))];
                self.node("Gemm", inputs, vec![int("transB", 1)])
            }
            Layer::Dropout { .. } => x,
            Layer::BatchNorm { momentum, eps } => {
                let inputs = [x]
                    .into_iter()
                    .chain(["weight", "bias", "running_mean", "running_var"].map(|leaf| self.tensor(param(leaf))))
                    .collect();
                self.node("BatchNormalization", inputs, vec![float("epsilon", eps), float("momentum", 1.0 - momentum)])
            }
            Layer::Relu => self.node("Relu", vec![x], vec![]),
            Layer::Activation(activation) => self.activation(activation, x),
        }
    }

    fn pool(&mut self, op: &str, kernel: usize, stride: usize, x: String) -> String {
        let (k, s) = (to_i64(kernel), to_i64(stride));
        self.node(op, vec![x], vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s])])
    }

    fn activation(&mut self, activation: tensor::Activation, x: String) -> String {
        use tensor::Activation as A;
        match activation {
            A::Tanh => self.node("Tanh", vec![x], vec![]),
            A::Sigmoid => self.node("Sigmoid", vec![x], vec![]),
            A::LeakyRelu(slope) => self.node("LeakyRelu", vec![x], vec![float("alpha", slope)]),
            // x/2·(1 + erf(x/√2))
            A::Gelu => {
                let scaled = self.binary("Mul", x.clone(), ("gelu.inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2));
                let erf = self.node("Erf", vec![scaled], vec![]);
                self.gelu_tail(x, erf)
            }
            // x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            A::GeluTanh => {
                let square = self.node("Mul", vec![x.clone(), x.clone()], vec![]);
                let cube = self.node("Mul", vec![square, x.clone()], vec![]);
                let term = self.binary("Mul", cube, ("gelu.cubic", A::GELU_TANH_CUBIC as f32));
                let inner = self.node("Add", vec![x.clone(), term], vec![]);
                let scaled = self.binary("Mul", inner, ("gelu.sqrt_2_over_pi", A::GELU_TANH_SCALE as f32));
                let tanh = self.node("Tanh", vec![scaled], vec![]);
                self.gelu_tail(x, tanh)
            }
        }
    }

    /// `x/2·(1 + t)`.
    fn gelu_tail(&mut self, x: String, t: String) -> String {
        let one_plus = self.binary("Add", t, ("gelu.one", 1.0));
        let times_x = self.node("Mul", vec![x, one_plus], vec![]);
        self.binary("Mul", times_x, ("gelu.half", 0.5))
    }

    /// `op(x, c)` with the scalar constant `c`, written once under its name.
    fn binary(&mut self, op: &str, x: String, (name, value): (&str, f32)) -> String {
        if self.named.insert(name.to_owned()) {
            self.initializers.push(float_tensor(name, &[], &[value]));
        }
        self.node(op, vec![x, name.to_owned()], vec![])
    }

    /// Writes the `state_dict` tensor `name` as an initializer and returns its name.
    fn tensor(&mut self, name: String) -> String {
        if self.named.insert(name.clone()) {
            let t = self.state.get(&name).unwrap_or_else(|| panic!("{name} is in every state_dict of its layer"));
            self.initializers.push(float_tensor(&name, t.shape(), t.data()));
        }
        name
    }

    /// Adds a node whose output takes a fresh name, and returns that name.
    fn node(&mut self, op: &str, inputs: Vec<String>, attributes: Vec<AttributeProto>) -> String {
        let output = format!("{}_{}", op.to_lowercase(), self.nodes.len());
        self.node_named(op, inputs, attributes, &output);
        output
    }

    fn node_named(&mut self, op: &str, inputs: Vec<String>, attributes: Vec<AttributeProto>, output: &str) {
        self.nodes.push(NodeProto {
            name: Some(format!("{op}_{}", self.nodes.len())),
            op_type: Some(op.to_owned()),
            input: inputs,
            output: vec![output.to_owned()],
            attribute: attributes,
            ..Default::default()
        });
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).expect("layer sizes fit in i64")
}

fn float_tensor(name: &str, shape: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.to_owned()),
        dims: shape.iter().map(|&d| to_i64(d)).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A float32 tensor's description, with `None` for the symbolic batch dimension.
fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => dimension::Value::DimValue(to_i64(*n)),
                None => dimension::Value::DimParam(BATCH.to_owned()),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor { elem_type: Some(DataType::Float as i32), shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn model(layers: &str) -> Sequential {
        let config = nn::SequentialConfig::parse(layers, [1, 8, 8]).unwrap();
        Sequential::new(&config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1))
    }

    #[test]
    fn the_file_holds_every_tensor_of_the_state_dict_under_its_name_and_the_description() {
        let model = model("conv(4,3,bias=false),batchnorm,relu,maxpool(2),flatten,linear(5),batchnorm,linear(3)");
        let bytes = export(&model, &[("test_accuracy".into(), "0.5".into())]);
        let file = ModelProto::decode(&bytes[..]).unwrap();
        assert_eq!((file.ir_version, file.opset_import[0].version), (Some(IR_VERSION), Some(OPSET)));
        let graph = file.graph.unwrap();

        let state = model.state_dict();
        let float_names: BTreeSet<&str> = state.names().filter(|n| state.get(n).is_some()).collect();
        let written: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        assert_eq!(written, float_names, "num_batches_tracked, an i64, is not needed to run");
        for t in &graph.initializer {
            let ours = state.get(t.name()).unwrap();
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            assert_eq!(dims, ours.shape(), "{}", t.name());
            let values: Vec<f32> =
                t.raw_data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            assert_eq!(values, ours.data(), "{}", t.name());
        }

        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(
            ops,
            [
                "Conv",
                "BatchNormalization",
                "Relu",
                "MaxPool",
                "Flatten",
                "Gemm",
                "BatchNormalization",
                "Gemm",
                "Softmax"
            ]
        );
        assert_eq!(graph.node[7].output, [LOGITS]);
        assert_eq!(graph.node[8].output, [PROBABILITIES]);
        let input = &graph.input[0];
        let Some(type_proto::Value::TensorType(tensor)) = &input.r#type.as_ref().unwrap().value else { panic!() };
        let dims: Vec<_> = tensor.shape.as_ref().unwrap().dim.iter().map(|d| d.value.clone().unwrap()).collect();
        assert_eq!(dims[0], dimension::Value::DimParam(BATCH.into()));
        assert_eq!(dims[1..], [1, 8, 8].map(dimension::Value::DimValue));
        assert_eq!(file.metadata_props[0].key(), "test_accuracy");
    }

    #[test]
    fn dropout_leaves_no_node_even_last() {
        let bytes = export(&model("flatten,dropout(0.5),linear(3),dropout(0.5)"), &[]);
        assert_eq!(operators(&bytes).unwrap(), ["Flatten", "Gemm", "Softmax"]);
        let graph = ModelProto::decode(&bytes[..]).unwrap().graph.unwrap();
        assert_eq!(graph.node[1].output, [LOGITS]);
    }
}
