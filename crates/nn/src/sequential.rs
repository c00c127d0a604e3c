//! Models a user describes as a sequence of layers, convolutional or not, written as text:
//!
//! ```text
//! conv(6,5,pad=2),relu,maxpool(2),conv(16,5),relu,maxpool(2),flatten,linear(120),relu,linear(84),relu,linear(10)
//! ```
//!
//! - `conv(OUT,K)` a `K x K` convolution to `OUT` channels; options `stride=S`, `pad=P`,
//!   `bias=false` (defaults 1, 0, true);
//! - `maxpool(K)` or `maxpool(K,S)` max pooling over `K x K` windows (stride `K` by default),
//!   `avgpool(K)` or `avgpool(K,S)` average pooling, `globalavgpool` each channel's mean
//!   (`[C, H, W]` to `C` values, flattened);
//! - `relu`, `tanh`, `sigmoid`, `gelu`, `gelu(tanh)` (the tanh approximation), `leakyrelu` or
//!   `leakyrelu(SLOPE)` (0.01 by default);
//! - `batchnorm` batch normalisation of each channel (`BatchNorm2d`) or each value
//!   (`BatchNorm1d`, after `flatten`), with options `momentum=M` and `eps=E` (PyTorch's 0.1
//!   and 1e-5 by default);
//! - `flatten` (channels, rows, columns: PyTorch's order), `linear(OUT)`, `dropout(P)` (the
//!   probability of zeroing a value).
//!
//! Parameters are named as PyTorch's examples name them: `conv1.weight`, `conv1.bias`, ... for
//! the convolutions in order, `fc1.weight`, ... for the linear layers and `bn1.weight`, ... for
//! the batch normalisations, whose running statistics are `bn1.running_mean`,
//! `bn1.running_var` and `bn1.num_batches_tracked` (an i64), as in PyTorch's `state_dict`.

use std::fmt;

use rand::Rng;

use crate::MlpConfig;
use crate::error::NnError;
use crate::linear::Linear;
use crate::model::Model;
use crate::params::{ParamId, Params};
use crate::state::{IntTensor, Scope, StateDict, Tensor};
use crate::tape::{Tape, Var};

/// One layer as a user writes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layer {
    /// `nn.Conv2d(in, out, kernel, stride, padding, bias)`; `in` comes from the input.
    Conv2d {
        /// Output channels.
        out: usize,
        /// Kernel side.
        kernel: usize,
        /// Step between windows.
        stride: usize,
        /// Zeros added on every side.
        padding: usize,
        /// Whether there is a bias.
        bias: bool,
    },
    /// `nn.MaxPool2d(kernel, stride)`.
    MaxPool2d {
        /// Window side.
        kernel: usize,
        /// Step between windows.
        stride: usize,
    },
    /// `nn.AvgPool2d(kernel, stride)`.
    AvgPool2d {
        /// Window side.
        kernel: usize,
        /// Step between windows.
        stride: usize,
    },
    /// `nn.AdaptiveAvgPool2d(1)` then `nn.Flatten()`: each channel's mean.
    GlobalAvgPool,
    /// `nn.ReLU()`.
    Relu,
    /// `nn.Tanh()`, `nn.Sigmoid()`, `nn.GELU()` or `nn.LeakyReLU(slope)`.
    Activation(tensor::Activation),
    /// `nn.Flatten()`: `[C, H, W]` to `C·H·W` values, in that order.
    Flatten,
    /// `nn.Linear(in, out)`; `in` comes from the input.
    Linear {
        /// Output width.
        out: usize,
    },
    /// `nn.Dropout(p)`: zeroes each value with probability `p` while training.
    Dropout {
        /// The probability of zeroing a value.
        p: f32,
    },
    /// `nn.BatchNorm2d(C)` on images, `nn.BatchNorm1d(C)` on flat rows.
    BatchNorm {
        /// How far each training batch moves the running statistics.
        momentum: f32,
        /// Added to the variance before its square root.
        eps: f32,
    },
}

impl Layer {
    /// PyTorch's default momentum of batch normalisation.
    pub const BATCH_NORM_MOMENTUM: f32 = 0.1;
    /// PyTorch's default eps of batch normalisation.
    pub const BATCH_NORM_EPS: f32 = 1e-5;
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Conv2d { out, kernel, stride, padding, bias } => {
                write!(f, "conv({out},{kernel}")?;
                if stride != 1 {
                    write!(f, ",stride={stride}")?;
                }
                if padding != 0 {
                    write!(f, ",pad={padding}")?;
                }
                if !bias {
                    f.write_str(",bias=false")?;
                }
                f.write_str(")")
            }
            Self::MaxPool2d { kernel, stride } if stride == kernel => write!(f, "maxpool({kernel})"),
            Self::MaxPool2d { kernel, stride } => write!(f, "maxpool({kernel},{stride})"),
            Self::AvgPool2d { kernel, stride } if stride == kernel => write!(f, "avgpool({kernel})"),
            Self::AvgPool2d { kernel, stride } => write!(f, "avgpool({kernel},{stride})"),
            Self::GlobalAvgPool => f.write_str("globalavgpool"),
            Self::Relu => f.write_str("relu"),
            Self::Activation(a) => write!(f, "{a}"),
            Self::Flatten => f.write_str("flatten"),
            Self::Linear { out } => write!(f, "linear({out})"),
            Self::Dropout { p } => write!(f, "dropout({p})"),
            Self::BatchNorm { momentum, eps } => {
                f.write_str("batchnorm")?;
                let mut options = Vec::new();
                if momentum != Self::BATCH_NORM_MOMENTUM {
                    options.push(format!("momentum={momentum}"));
                }
                if eps != Self::BATCH_NORM_EPS {
                    options.push(format!("eps={eps}"));
                }
                if !options.is_empty() {
                    write!(f, "({})", options.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// A model's layers and the shape of its input: what a model file records to rebuild it.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialConfig {
    /// The input's channels, rows and columns (`[1, 28, 28]` for MNIST).
    pub input: [usize; 3],
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

/// The metadata keys of a sequential model's file.
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "mnist-sequential";
const LAYERS_KEY: &str = "layers";
const INPUT_KEY: &str = "input";

/// The shape of the values between two layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Channels, rows, columns.
    Image(usize, usize, usize),
    /// A flat row.
    Flat(usize),
}

impl Shape {
    fn len(self) -> usize {
        match self {
            Self::Image(c, h, w) => c * h * w,
            Self::Flat(n) => n,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(c, h, w) => write!(f, "{c}x{h}x{w}"),
            Self::Flat(n) => write!(f, "{n} values"),
        }
    }
}

impl SequentialConfig {
    /// LeNet-5 for 28x28 images, as PyTorch's tutorials write it.
    pub const LENET: &'static str = "conv(6,5,pad=2),relu,maxpool(2),conv(16,5),relu,maxpool(2),flatten,linear(120),relu,linear(84),relu,linear(10)";

    /// A small CNN of 3x3 convolutions with batch normalisation for 28x28 images: what a
    /// PyTorch user writes for MNIST today.
    pub const CNN: &'static str = "conv(16,3,pad=1,bias=false),batchnorm,relu,conv(16,3,pad=1,bias=false),batchnorm,relu,maxpool(2),conv(32,3,pad=1,bias=false),batchnorm,relu,conv(32,3,pad=1,bias=false),batchnorm,relu,maxpool(2),flatten,linear(128),batchnorm,relu,linear(10)";

    /// LeNet-5 for images of `input` = `[C, H, W]` and `classes` classes: [`Self::LENET`] with
    /// its last layer as wide as the classes.
    ///
    /// # Errors
    /// Images too small for its kernels.
    pub fn lenet(input: [usize; 3], classes: usize) -> Result<Self, NnError> {
        let text = Self::LENET.replace("linear(10)", &format!("linear({classes})"));
        Self::parse(&text, input)
    }

    /// [`Self::CNN`] for images of `input` = `[C, H, W]` and `classes` classes, its last layer
    /// as wide as the classes.
    ///
    /// # Errors
    /// Images too small for its two poolings.
    pub fn cnn(input: [usize; 3], classes: usize) -> Result<Self, NnError> {
        let text = Self::CNN.replace("linear(10)", &format!("linear({classes})"));
        Self::parse(&text, input)
    }

    /// Parses a layer list for inputs of `input` = `[C, H, W]`: layers separated by commas, as
    /// the module's documentation lists them (`conv(OUT,K)`, the pools, `batchnorm`, the
    /// activations, `flatten`, `linear(OUT)`, `dropout(P)`).
    ///
    /// ```
    /// let config = nn::SequentialConfig::parse("conv(4,3,pad=1),relu,maxpool(2),flatten,linear(10)", [1, 8, 8]).unwrap();
    /// assert_eq!(config.to_string(), "conv(4,3,pad=1),relu,maxpool(2),flatten,linear(10)");
    /// assert_eq!(config.classes().unwrap(), 10);
    /// ```
    ///
    /// # Errors
    /// [`NnError::BadLayers`] naming the layer: unknown, malformed, or a shape that does not
    /// fit (a kernel larger than its input, a linear layer on images without `flatten`).
    pub fn parse(text: &str, input: [usize; 3]) -> Result<Self, NnError> {
        let layers = split_top_level(text).into_iter().map(parse_layer).collect::<Result<Vec<_>, _>>()?;
        let config = Self { input, layers };
        config.shapes()?;
        Ok(config)
    }

    /// An MLP as a sequence: `flatten`, then `linear` layers with ReLU between them (and after
    /// the last with `output_relu`).
    pub fn mlp(input: [usize; 3], config: &MlpConfig) -> Self {
        let mut layers = vec![Layer::Flatten];
        let last = config.widths.len() - 2;
        for (i, &out) in config.widths[1..].iter().enumerate() {
            layers.push(Layer::Linear { out });
            if i < last || config.output_relu {
                layers.push(Layer::Relu);
            }
        }
        Self { input, layers }
    }

    /// The name of each layer's parameters in the `state_dict` (`conv1`, `fc2`, `bn1`: the
    /// part before the dot), or `None` for a layer without any.
    ///
    /// ```
    /// let config = nn::SequentialConfig::parse("conv(4,3),batchnorm,relu,flatten,linear(10)", [1, 8, 8]).unwrap();
    /// let scopes = config.scopes();
    /// assert_eq!(scopes, [Some("conv1"), Some("bn1"), None, None, Some("fc1")].map(|s| s.map(String::from)));
    /// ```
    pub fn scopes(&self) -> Vec<Option<String>> {
        let (mut convs, mut linears, mut norms) = (0, 0, 0);
        let next = |count: &mut usize, kind: &str| {
            *count += 1;
            Some(format!("{kind}{count}"))
        };
        self.layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv2d { .. } => next(&mut convs, "conv"),
                Layer::Linear { .. } => next(&mut linears, "fc"),
                Layer::BatchNorm { .. } => next(&mut norms, "bn"),
                _ => None,
            })
            .collect()
    }

    /// The number of classes: the width of the last layer's output.
    ///
    /// # Errors
    /// As [`SequentialConfig::parse`].
    pub fn classes(&self) -> Result<usize, NnError> {
        Ok(self.shapes()?.last().map_or(0, |s| s.len()))
    }

    /// The number of parameters the model has, counted from the config, before anything is
    /// allocated (saturating, for configs too large to build).
    ///
    /// ```
    /// let lenet = nn::SequentialConfig::parse(nn::SequentialConfig::LENET, [1, 28, 28]).unwrap();
    /// assert_eq!(lenet.parameter_count().unwrap(), 61_706);
    /// ```
    ///
    /// # Errors
    /// As [`SequentialConfig::parse`].
    pub fn parameter_count(&self) -> Result<usize, NnError> {
        let shapes = self.shapes()?;
        let mut input = Shape::Image(self.input[0], self.input[1], self.input[2]);
        let mut count = 0usize;
        for (layer, &next) in self.layers.iter().zip(&shapes) {
            let (weights, biases) = match (*layer, input) {
                (Layer::Conv2d { out, kernel, bias, .. }, Shape::Image(c, ..)) => {
                    (out.saturating_mul(c).saturating_mul(kernel * kernel), if bias { out } else { 0 })
                }
                (Layer::Linear { out }, Shape::Flat(inputs)) => (out.saturating_mul(inputs), out),
                (Layer::BatchNorm { .. }, shape) => (channels(shape), channels(shape)),
                _ => (0, 0),
            };
            count = count.saturating_add(weights).saturating_add(biases);
            input = next;
        }
        Ok(count)
    }

    /// The values one sample's activations take, every layer's output added up.
    ///
    /// # Errors
    /// As [`SequentialConfig::parse`].
    pub fn activations_per_sample(&self) -> Result<usize, NnError> {
        Ok(self.shapes()?.iter().fold(0usize, |sum, s| sum.saturating_add(s.len())))
    }

    /// The shape after every layer, checking that each fits.
    fn shapes(&self) -> Result<Vec<Shape>, NnError> {
        let [c, h, w] = self.input;
        if c * h * w == 0 {
            return Err(NnError::BadLayers { reason: format!("an input of {c}x{h}x{w} has no values") });
        }
        let mut shape = Shape::Image(c, h, w);
        let mut shapes = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let bad = |why: String| NnError::BadLayers { reason: format!("{layer}: {why}") };
            shape = match (*layer, shape) {
                (Layer::Conv2d { out, kernel, stride, .. }, Shape::Image(c, h, w)) => {
                    if out == 0 || kernel == 0 || stride == 0 {
                        return Err(bad("sizes must be at least 1".into()));
                    }
                    let geom = conv_shape(*layer, (c, h, w));
                    if !geom.is_valid() {
                        return Err(bad(format!("its input is {shape}, smaller than the {kernel}x{kernel} kernel")));
                    }
                    Shape::Image(out, geom.out_height(), geom.out_width())
                }
                (Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride }, Shape::Image(c, h, w)) => {
                    if kernel == 0 || stride == 0 {
                        return Err(bad("sizes must be at least 1".into()));
                    }
                    if h < kernel || w < kernel {
                        return Err(bad(format!("its input is {shape}, smaller than the {kernel}x{kernel} window")));
                    }
                    let geom = pool_shape(kernel, stride, (c, h, w));
                    Shape::Image(c, geom.out_height(), geom.out_width())
                }
                (Layer::GlobalAvgPool, Shape::Image(c, ..)) => Shape::Flat(c),
                (
                    Layer::Conv2d { .. } | Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. } | Layer::GlobalAvgPool,
                    Shape::Flat(_),
                ) => {
                    return Err(bad(format!("its input is {shape}, not images: it must come before flatten")));
                }
                (Layer::Flatten, s) => Shape::Flat(s.len()),
                (Layer::Linear { out }, Shape::Flat(_)) if out > 0 => Shape::Flat(out),
                (Layer::Linear { .. }, Shape::Flat(_)) => return Err(bad("a width of 0".into())),
                (Layer::Linear { .. }, Shape::Image(..)) => {
                    return Err(bad(format!("its input is {shape}: add flatten before it")));
                }
                (Layer::BatchNorm { momentum, .. }, _) if !(0.0..=1.0).contains(&momentum) => {
                    return Err(bad(format!("the momentum {momentum} is not in [0, 1]")));
                }
                (Layer::BatchNorm { eps, .. }, _) if !(eps.is_finite() && eps > 0.0) => {
                    return Err(bad(format!("eps {eps} is not a finite number above 0")));
                }
                (Layer::BatchNorm { .. }, s) => s,
                (Layer::Dropout { p }, s) if (0.0..1.0).contains(&p) => s,
                (Layer::Dropout { p }, _) => return Err(bad(format!("the probability {p} is not in [0, 1)"))),
                (Layer::Activation(tensor::Activation::LeakyRelu(slope)), _) if !slope.is_finite() => {
                    return Err(bad(format!("the slope {slope} is not a finite number")));
                }
                (Layer::Relu | Layer::Activation(_), s) => s,
            };
            shapes.push(shape);
        }
        if !self.layers.iter().any(|l| matches!(l, Layer::Conv2d { .. } | Layer::Linear { .. })) {
            return Err(NnError::BadLayers {
                reason: "no layer has parameters to train: add a linear (or conv) layer".into(),
            });
        }
        match shape {
            Shape::Flat(_) => Ok(shapes),
            Shape::Image(..) => {
                Err(NnError::BadLayers { reason: format!("the model ends on {shape}: end with flatten and linear") })
            }
        }
    }

    /// The MLP this is, if it is one: `flatten` then linear layers with ReLU between them.
    pub fn as_mlp(&self) -> Option<MlpConfig> {
        let mut widths = vec![self.input.iter().product()];
        let mut output_relu = false;
        let mut layers = self.layers.iter().peekable();
        if layers.next() != Some(&Layer::Flatten) {
            return None;
        }
        while let Some(layer) = layers.next() {
            let Layer::Linear { out } = *layer else { return None };
            widths.push(out);
            match layers.peek() {
                Some(Layer::Relu) => {
                    layers.next();
                    output_relu = layers.peek().is_none();
                }
                Some(_) => return None,
                None => {}
            }
        }
        let config = MlpConfig { widths, output_relu };
        (config.widths.len() >= 2 && Self::mlp(self.input, &config) == *self).then_some(config)
    }

    /// Reads the config a model file records.
    ///
    /// # Errors
    /// Missing or malformed metadata.
    pub fn from_state_dict(state: &StateDict) -> Result<Self, NnError> {
        Self::parse(state.require_meta(LAYERS_KEY)?, Self::input_from_state_dict(state)?)
    }

    fn input_from_state_dict(state: &StateDict) -> Result<[usize; 3], NnError> {
        let input_text = state.require_meta(INPUT_KEY)?;
        let bad_input = || NnError::BadMetadata {
            key: INPUT_KEY.into(),
            value: input_text.into(),
            expected: "channels,rows,columns",
        };
        let dims: Vec<usize> =
            input_text.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad_input())?;
        dims.try_into().map_err(|_| bad_input())
    }
}

impl fmt::Display for SequentialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{layer}")?;
        }
        Ok(())
    }
}

/// Splits at the commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, ch) in text.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts
}

fn parse_layer(text: &str) -> Result<Layer, NnError> {
    let bad = |why: &str| NnError::BadLayers { reason: format!("{text:?}: {why}") };
    let (name, args) = match text.split_once('(') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix(')').ok_or_else(|| bad("a parenthesis is not closed"))?;
            (name.trim(), inner.split(',').map(str::trim).collect::<Vec<_>>())
        }
        None => (text, Vec::new()),
    };
    let mut positional = Vec::new();
    let mut named = Vec::new();
    for arg in args.iter().filter(|a| !a.is_empty()) {
        match arg.split_once('=') {
            Some((k, v)) => named.push((k.trim(), v.trim())),
            None => positional.push(*arg),
        }
    }
    let count = |v: &str| v.parse::<usize>().map_err(|_| bad(&format!("{v:?} is not a count")));
    let option = |key: &str| named.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let check_options = |allowed: &[&str]| match named.iter().find(|(k, _)| !allowed.contains(k)) {
        Some((k, _)) => Err(bad(&format!("unknown option {k:?}"))),
        None => Ok(()),
    };
    let arity = |n: std::ops::RangeInclusive<usize>, what: &str| {
        if n.contains(&positional.len()) { Ok(()) } else { Err(bad(&format!("takes {what}"))) }
    };
    match name {
        "conv" => {
            arity(2..=2, "output channels and a kernel size, as conv(6,5)")?;
            check_options(&["stride", "pad", "bias"])?;
            let bias = match option("bias") {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => return Err(bad(&format!("bias={other} is neither true nor false"))),
            };
            Ok(Layer::Conv2d {
                out: count(positional[0])?,
                kernel: count(positional[1])?,
                stride: option("stride").map(count).transpose()?.unwrap_or(1),
                padding: option("pad").map(count).transpose()?.unwrap_or(0),
                bias,
            })
        }
        "maxpool" => {
            arity(1..=2, "a window size and perhaps a stride, as maxpool(2)")?;
            check_options(&[])?;
            let kernel = count(positional[0])?;
            Ok(Layer::MaxPool2d { kernel, stride: positional.get(1).map(|s| count(s)).transpose()?.unwrap_or(kernel) })
        }
        "avgpool" => {
            arity(1..=2, "a window size and perhaps a stride, as avgpool(2)")?;
            check_options(&[])?;
            let kernel = count(positional[0])?;
            Ok(Layer::AvgPool2d { kernel, stride: positional.get(1).map(|s| count(s)).transpose()?.unwrap_or(kernel) })
        }
        "leakyrelu" => {
            arity(0..=1, "perhaps a slope, as leakyrelu(0.01)")?;
            check_options(&[])?;
            let slope = match positional.first() {
                Some(s) => s.parse::<f32>().map_err(|_| bad("the slope is not a number"))?,
                None => 0.01,
            };
            Ok(Layer::Activation(tensor::Activation::LeakyRelu(slope)))
        }
        "gelu" => match positional[..] {
            [] if named.is_empty() => Ok(Layer::Activation(tensor::Activation::Gelu)),
            ["tanh"] if named.is_empty() => Ok(Layer::Activation(tensor::Activation::GeluTanh)),
            _ => Err(bad("takes nothing, or tanh for the tanh approximation, as gelu(tanh)")),
        },
        "linear" => {
            arity(1..=1, "an output width, as linear(10)")?;
            check_options(&[])?;
            Ok(Layer::Linear { out: count(positional[0])? })
        }
        "batchnorm" => {
            arity(0..=0, "only options, as batchnorm(momentum=0.3,eps=1e-3)")?;
            check_options(&["momentum", "eps"])?;
            let number = |key: &str, default: f32| match option(key) {
                Some(v) => v.parse::<f32>().map_err(|_| bad(&format!("{key}={v} is not a number"))),
                None => Ok(default),
            };
            Ok(Layer::BatchNorm {
                momentum: number("momentum", Layer::BATCH_NORM_MOMENTUM)?,
                eps: number("eps", Layer::BATCH_NORM_EPS)?,
            })
        }
        "dropout" => {
            arity(1..=1, "a probability, as dropout(0.5)")?;
            check_options(&[])?;
            let p = positional[0].parse::<f32>().map_err(|_| bad("the probability is not a number"))?;
            Ok(Layer::Dropout { p })
        }
        "relu" | "flatten" | "tanh" | "sigmoid" | "globalavgpool" if args.iter().all(|a| a.is_empty()) => {
            Ok(match name {
                "relu" => Layer::Relu,
                "flatten" => Layer::Flatten,
                "tanh" => Layer::Activation(tensor::Activation::Tanh),
                "sigmoid" => Layer::Activation(tensor::Activation::Sigmoid),
                _ => Layer::GlobalAvgPool,
            })
        }
        "relu" | "flatten" | "tanh" | "sigmoid" | "globalavgpool" => Err(bad("takes no arguments")),
        "" => Err(bad("an empty layer")),
        _ => Err(bad(&format!("unknown layer; known: {KNOWN_LAYERS}"))),
    }
}

/// Every layer a list may name.
const KNOWN_LAYERS: &str =
    "conv, maxpool, avgpool, globalavgpool, batchnorm, relu, tanh, sigmoid, gelu, leakyrelu, flatten, linear, dropout";

/// The channels a batch normalisation normalises: an image's, or each value of a flat row.
fn channels(shape: Shape) -> usize {
    match shape {
        Shape::Image(c, ..) => c,
        Shape::Flat(n) => n,
    }
}

fn conv_shape(layer: Layer, (c, h, w): (usize, usize, usize)) -> tensor::Conv2dShape {
    let Layer::Conv2d { out, kernel, stride, padding, .. } = layer else { unreachable!("a convolution") };
    tensor::Conv2dShape { in_channels: c, height: h, width: w, out_channels: out, kernel, stride, padding }
}

fn pool_shape(kernel: usize, stride: usize, (c, h, w): (usize, usize, usize)) -> tensor::Pool2dShape {
    tensor::Pool2dShape { channels: c, height: h, width: w, kernel, stride }
}

/// A layer built: its parameters and its geometry.
#[derive(Debug, Clone)]
enum Built {
    Conv {
        weight: ParamId,
        bias: Option<ParamId>,
        shape: tensor::Conv2dShape,
        sparse: bool,
    },
    Pool(tensor::Pool2dShape),
    AvgPool(tensor::Pool2dShape),
    GlobalAvgPool {
        channels: usize,
    },
    Relu,
    Activation(tensor::Activation),
    Flatten,
    Linear(Linear),
    Dropout(f32),
    /// Batch normalisation; its running statistics are `running[stats]`.
    BatchNorm {
        weight: ParamId,
        bias: ParamId,
        momentum: f32,
        eps: f32,
        stats: usize,
    },
}

/// A batch normalisation's running statistics: what evaluation normalises with.
#[derive(Debug, Clone, PartialEq)]
struct Running {
    /// Where its buffers are in the `state_dict` (`bn1`).
    scope: Scope,
    mean: Vec<f32>,
    var: Vec<f32>,
    /// Batches taken in, by training steps and by re-estimates (PyTorch's
    /// `num_batches_tracked`, which every forward pass in training mode counts).
    batches: i64,
}

/// A model built from a [`SequentialConfig`], owning its parameters. A first layer with
/// parameters that reads the data itself (nothing before it but `flatten`) reads it as sparse,
/// convolution or linear layer alike: images are mostly zeros ([`Tape::sparse_conv2d`],
/// [`Tape::sparse_linear`]).
///
/// Dropout layers need a generator: [`Model::forward_train`] draws their masks from it;
/// [`Model::forward`] leaves dropout out (evaluation mode).
///
/// ```
/// use nn::{Model, Sequential, SequentialConfig};
/// let config = SequentialConfig::parse(SequentialConfig::LENET, [1, 28, 28]).unwrap();
/// let lenet = Sequential::new(&config, &mut train_rng());
/// assert_eq!(lenet.params().num_scalars(), 61_706);
/// assert_eq!(lenet.params().get(lenet.params().by_name("conv2.weight").unwrap()).shape(), &[16, 6, 5, 5]);
/// # fn train_rng() -> rand_chacha::ChaCha8Rng { rand::SeedableRng::seed_from_u64(0) }
/// ```
#[derive(Debug, Clone)]
pub struct Sequential {
    config: SequentialConfig,
    layers: Vec<Built>,
    params: Params,
    /// Each batch normalisation's running statistics, in order.
    running: Vec<Running>,
    classes: usize,
}

impl Sequential {
    /// A model initialised as PyTorch initialises `nn.Conv2d` and `nn.Linear` (uniform in
    /// `±1/sqrt(fan_in)`), layer by layer, from the caller's generator.
    ///
    /// # Panics
    /// If the config does not fit its input (configs from [`SequentialConfig::parse`] do).
    #[track_caller]
    pub fn new<R: Rng + ?Sized>(config: &SequentialConfig, rng: &mut R) -> Self {
        Self::build(config, |fan_out, fan_in| {
            let (w, b) = tensor::linear_init(fan_out, fan_in, rng);
            (w.into_raw_vec_and_offset().0, b.to_vec())
        })
    }

    /// A multilayer perceptron of `config` on flat rows of `config.widths[0]` values, initialised
    /// as [`Sequential::new`] does: `fc1`, `fc2`, ... with ReLU between them (and on the
    /// logits with [`MlpConfig::output_relu`]), the first layer reading the data as sparse rows.
    ///
    /// ```
    /// use nn::Model;
    /// use rand::SeedableRng;
    /// let config = nn::MlpConfig { widths: vec![4, 8, 3], output_relu: false };
    /// let mlp = nn::Sequential::mlp(&config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    /// let probs = mlp.probabilities(ndarray::Array2::zeros((5, 4)).view());
    /// assert_eq!(probs.dim(), (5, 3));
    /// assert!((probs.row(0).sum() - 1.0).abs() < 1e-6);
    /// ```
    ///
    /// # Panics
    /// If the config does not [validate](MlpConfig::validate).
    #[track_caller]
    pub fn mlp<R: Rng + ?Sized>(config: &MlpConfig, rng: &mut R) -> Self {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        Self::new(&SequentialConfig::mlp([1, 1, config.widths[0]], config), rng)
    }

    fn build(config: &SequentialConfig, mut init: impl FnMut(usize, usize) -> (Vec<f32>, Vec<f32>)) -> Self {
        let shapes = config.shapes().unwrap_or_else(|e| panic!("{e}"));
        let mut params = Params::new();
        let mut running = Vec::new();
        let mut shape = Shape::Image(config.input[0], config.input[1], config.input[2]);
        let mut layers = Vec::with_capacity(config.layers.len());
        // Whether the layer reads the data as it came (only flattened): the sparse paths read
        // the tape's input itself, so a layer after dropout, ReLU or pooling takes the dense one.
        let mut reads_input = true;
        for ((layer, &next), scope) in config.layers.iter().zip(&shapes).zip(config.scopes()) {
            let sparse = reads_input;
            reads_input &= matches!(layer, Layer::Flatten);
            layers.push(match (*layer, shape) {
                (Layer::Conv2d { out, kernel, bias, .. }, Shape::Image(c, h, w)) => {
                    let geom = conv_shape(*layer, (c, h, w));
                    let scope = Scope::new(scope.expect("a convolution has parameters"));
                    let (wv, bv) = init(out, geom.patch_len());
                    let weight = params.add(scope.name("weight"), &[out, c, kernel, kernel], wv);
                    let bias = bias.then(|| params.add(scope.name("bias"), &[out], bv));
                    Built::Conv { weight, bias, shape: geom, sparse }
                }
                (Layer::MaxPool2d { kernel, stride }, Shape::Image(c, h, w)) => {
                    Built::Pool(pool_shape(kernel, stride, (c, h, w)))
                }
                (Layer::Linear { out }, Shape::Flat(inputs)) => {
                    let (wv, bv) = init(out, inputs);
                    let name = scope.expect("a linear layer has parameters");
                    let mut linear = Linear::from_values(&mut params, &name, inputs, out, wv, bv);
                    linear.sparse_input = sparse;
                    Built::Linear(linear)
                }
                (Layer::AvgPool2d { kernel, stride }, Shape::Image(c, h, w)) => {
                    Built::AvgPool(pool_shape(kernel, stride, (c, h, w)))
                }
                (Layer::GlobalAvgPool, Shape::Image(channels, ..)) => Built::GlobalAvgPool { channels },
                (Layer::Relu, _) => Built::Relu,
                (Layer::Activation(f), _) => Built::Activation(f),
                (Layer::Flatten, _) => Built::Flatten,
                (Layer::Dropout { p }, _) => Built::Dropout(p),
                (Layer::BatchNorm { momentum, eps }, shape) => {
                    // PyTorch's initialisation, which draws nothing from the generator.
                    let c = channels(shape);
                    let scope = Scope::new(scope.expect("a batch normalisation has parameters"));
                    let weight = params.add(scope.name("weight"), &[c], vec![1.0; c]);
                    let bias = params.add(scope.name("bias"), &[c], vec![0.0; c]);
                    running.push(Running { scope, mean: vec![0.0; c], var: vec![1.0; c], batches: 0 });
                    Built::BatchNorm { weight, bias, momentum, eps, stats: running.len() - 1 }
                }
                (layer, shape) => unreachable!("{layer} on {shape} passed the shape check"),
            });
            shape = next;
        }
        Self { config: config.clone(), layers, params, running, classes: shape.len() }
    }

    /// The model's description.
    pub fn config(&self) -> &SequentialConfig {
        &self.config
    }

    /// Records the forward pass; with `rng`, in training mode (dropout layers draw their masks
    /// from it).
    #[track_caller]
    fn forward_with_dropout(&self, tape: &mut Tape, x: Var, rng: Option<&mut dyn rand::RngCore>) -> Var {
        let mut rng = rng;
        let mut h = x;
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            // A ReLU right after a batch normalisation runs in its pass.
            let relu = fusing()
                && matches!(layer, Built::BatchNorm { .. })
                && layers.next_if(|l| matches!(l, Built::Relu)).is_some();
            // A ReLU before a max pooling runs after it instead, on the pooled values: the same
            // outputs and gradients (for inputs without NaN, which pooling keeps and ReLU
            // drops), since the maximum of a window of ReLUs is the ReLU of its maximum, and a
            // window cut to 0 passes no gradient either way.
            if let (true, Built::Relu, Some(Built::Pool(shape))) = (fusing(), layer, layers.peek()) {
                let pooled = tape.max_pool2d(h, *shape);
                h = tape.relu(pooled);
                layers.next();
                continue;
            }
            h = match layer {
                Built::Conv { weight, bias, shape, sparse: true } => {
                    tape.sparse_conv2d(&self.params, h, *weight, *bias, *shape)
                }
                Built::Conv { weight, bias, shape, sparse: false } => {
                    tape.conv2d(&self.params, h, *weight, *bias, *shape)
                }
                Built::Pool(shape) => tape.max_pool2d(h, *shape),
                Built::AvgPool(shape) => tape.avg_pool2d(h, *shape),
                Built::GlobalAvgPool { channels } => tape.global_avg_pool(h, *channels),
                Built::Relu => tape.relu(h),
                Built::Activation(f) => tape.activation(h, *f),
                Built::Flatten => h,
                Built::Linear(linear) => linear.forward(tape, &self.params, h),
                Built::BatchNorm { weight, bias, eps, stats, .. } => match (&rng, relu) {
                    (Some(_), false) => tape.batch_norm(&self.params, h, *weight, *bias, *eps),
                    (Some(_), true) => tape.batch_norm_relu(&self.params, h, *weight, *bias, *eps),
                    (None, _) => {
                        let r = &self.running[*stats];
                        let (params, (w, b)) = (&self.params, (*weight, *bias));
                        match relu {
                            false => tape.batch_norm_fixed(params, h, w, b, &r.mean, &r.var, *eps),
                            true => tape.batch_norm_fixed_relu(params, h, w, b, &r.mean, &r.var, *eps),
                        }
                    }
                },
                Built::Dropout(p) => match rng.as_deref_mut() {
                    Some(rng) => tape.dropout(h, *p, rng),
                    None => h,
                },
            };
        }
        h
    }

    /// Takes the batch statistics on `tape` into the running ones: with each layer's momentum,
    /// or with `weight` in place of every layer's.
    fn take_statistics(&mut self, tape: &Tape, weight: Option<f32>) {
        let momenta = self.layers.iter().filter_map(|l| match l {
            Built::BatchNorm { momentum, stats, .. } => Some((weight.unwrap_or(*momentum), *stats)),
            _ => None,
        });
        for ((momentum, stats), batch) in momenta.zip(tape.batch_statistics()) {
            if batch.count < 2 {
                // One value per channel has no variance to learn from (PyTorch refuses it).
                continue;
            }
            let (mean, var) = (batch.mean, batch.variance);
            let running = &mut self.running[stats];
            let keep = 1.0 - momentum;
            running.mean.iter_mut().zip(mean).for_each(|(r, &m)| *r = keep * *r + momentum * m);
            running.var.iter_mut().zip(var).for_each(|(r, &v)| *r = keep * *r + momentum * v);
            running.batches += 1;
        }
    }
}

/// Whether layer lists run some layers together ([`Sequential`]'s forward pass says which):
/// always, except in tests that compare with the layers run one by one.
fn fusing() -> bool {
    #[cfg(test)]
    if tests::UNFUSED.get() {
        return false;
    }
    true
}

impl Model for Sequential {
    fn params(&self) -> &Params {
        &self.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    fn input_width(&self) -> usize {
        self.config.input.iter().product()
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn describe(&self) -> String {
        match self.config.as_mlp() {
            Some(mlp) => mlp.describe(),
            None => self.config.to_string(),
        }
    }

    fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        self.forward_with_dropout(tape, x, None)
    }

    fn forward_train(&self, tape: &mut Tape, x: Var, rng: &mut dyn rand::RngCore) -> Var {
        self.forward_with_dropout(tape, x, Some(rng))
    }

    fn normalizes_over_batch(&self) -> bool {
        !self.running.is_empty()
    }

    fn track_running_statistics(&mut self, tape: &Tape) {
        self.take_statistics(tape, None);
    }

    fn average_running_statistics(&mut self, tape: &Tape, weight: f32) {
        self.take_statistics(tape, Some(weight));
    }

    fn state_dict(&self) -> StateDict {
        if let Some(mlp) = self.config.as_mlp() {
            // An MLP's file, as MLPs have always been written, which every earlier reader
            // understands.
            let mut state = self.params.state_dict();
            mlp.write_meta(&mut state);
            state.set_meta(INPUT_KEY, self.config.input.map(|d| d.to_string()).join(","));
            return state;
        }
        let mut state = self.params.state_dict();
        let [c, h, w] = self.config.input;
        state.set_meta(FORMAT_KEY, FORMAT);
        state.set_meta(INPUT_KEY, format!("{c},{h},{w}"));
        state.set_meta(LAYERS_KEY, self.config.to_string());
        for running in &self.running {
            let scope = &running.scope;
            state.insert(scope.name("running_mean"), Tensor::new(vec![running.mean.len()], running.mean.clone()));
            state.insert(scope.name("running_var"), Tensor::new(vec![running.var.len()], running.var.clone()));
            state.insert_i64(scope.name("num_batches_tracked"), IntTensor::new(vec![], vec![running.batches]));
        }
        state
    }

    /// Reads a file written by [`Model::state_dict`] of a `Sequential`, or an MLP's file
    /// (which records its widths, [`MlpConfig::from_state_dict`]): then the input is one channel of
    /// `1 x inputs` values, as flat as an MLP takes it.
    fn from_state_dict(state: &StateDict) -> Result<Self, NnError> {
        let config = match state.meta(LAYERS_KEY) {
            Some(_) => SequentialConfig::from_state_dict(state)?,
            None => {
                let mlp = MlpConfig::from_state_dict(state)?;
                let input = match state.meta(INPUT_KEY) {
                    Some(_) => SequentialConfig::input_from_state_dict(state)?,
                    None => [1, 1, mlp.widths[0]],
                };
                if input.iter().product::<usize>() != mlp.widths[0] {
                    return Err(NnError::BadMetadata {
                        key: INPUT_KEY.into(),
                        value: input.map(|d| d.to_string()).join(","),
                        expected: "as many values as the first width",
                    });
                }
                SequentialConfig::mlp(input, &mlp)
            }
        };
        let mut model = Self::build(&config, |fan_out, fan_in| (vec![0.0; fan_out * fan_in], vec![0.0; fan_out]));
        if model.running.is_empty() {
            model.params.load_state_dict(state)?;
            return Ok(model);
        }
        // The running statistics are taken out first: the parameters load strictly.
        let mut state = state.clone();
        for running in &mut model.running {
            let scope = running.scope.clone();
            for (leaf, values) in [("running_mean", &mut running.mean), ("running_var", &mut running.var)] {
                let name = scope.name(leaf);
                let tensor = state.remove(&name).ok_or_else(|| NnError::MissingParam { name: name.clone() })?;
                if tensor.shape() != [values.len()] {
                    return Err(NnError::ShapeMismatch {
                        name,
                        expected: vec![values.len()],
                        found: tensor.shape().to_vec(),
                    });
                }
                *values = tensor.into_data();
            }
            let name = scope.name("num_batches_tracked");
            let tracked = state.remove_i64(&name).ok_or_else(|| NnError::MissingParam { name: name.clone() })?;
            running.batches = match tracked.data() {
                [n] => *n,
                _ => return Err(NnError::ShapeMismatch { name, expected: vec![], found: tracked.shape().to_vec() }),
            };
        }
        model.params.load_state_dict(&state)?;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn batch_normalisation_keeps_running_statistics_in_its_file() {
        let config = SequentialConfig::parse(SequentialConfig::CNN, [1, 28, 28]).unwrap();
        assert_eq!(config.to_string(), SequentialConfig::CNN);
        let mut model = Sequential::new(&config, &mut rng(0));
        assert_eq!(config.parameter_count().unwrap(), model.params().num_scalars());
        assert!(model.normalizes_over_batch());
        // One training forward pass moves the running statistics.
        let x = Array2::from_shape_fn((4, 784), |(i, j)| ((i * 7 + j) % 11) as f32 / 10.0);
        let mut tape = Tape::new();
        let input = tape.input(x.view());
        model.forward_train(&mut tape, input, &mut rng(1));
        assert_eq!(tape.batch_statistics().count(), 5);
        model.track_running_statistics(&tape);
        let state = model.state_dict();
        assert_eq!(state.get_i64("bn5.num_batches_tracked").unwrap().data(), &[1]);
        assert_eq!(state.get("bn1.running_var").unwrap().shape(), &[16]);
        assert!(state.get("bn1.running_mean").unwrap().data().iter().any(|&m| m != 0.0));
        let back = Sequential::from_state_dict(&StateDict::from_safetensors(&state.to_safetensors()).unwrap()).unwrap();
        assert_eq!(back.state_dict(), state);
        assert_eq!(back.logits(x.view()), model.logits(x.view()), "evaluation uses the running statistics");
        let mut missing = state.clone();
        missing.remove("bn2.running_var");
        assert_eq!(Sequential::from_state_dict(&missing).unwrap_err().to_string(), "missing parameter bn2.running_var");
        let options =
            SequentialConfig::parse("flatten,batchnorm(momentum=0.3,eps=0.001),linear(2)", [1, 2, 2]).unwrap();
        assert_eq!(options.to_string(), "flatten,batchnorm(momentum=0.3,eps=0.001),linear(2)");

        // A batch of one sample has one value per channel after flatten: no statistics to take.
        let mut one = Sequential::new(&options, &mut rng(2));
        let before = one.state_dict();
        let mut tape = Tape::new();
        let input = tape.input(ndarray::array![[0.5f32, 0.0, 1.0, 0.25]].view());
        let y = one.forward_train(&mut tape, input, &mut rng(3));
        assert!(tape.value(y).iter().all(|v| v.is_finite()));
        one.track_running_statistics(&tape);
        assert_eq!(one.state_dict(), before, "running statistics and their count unchanged");
    }

    #[test]
    fn bad_layer_lists_are_refused_naming_the_layer_and_the_shapes() {
        for (text, message) in [
            ("conv(6,5),relu,linear(10)", "linear(10): its input is 6x24x24: add flatten before it"),
            ("conv(6,30),flatten,linear(10)", "conv(6,30): its input is 1x28x28, smaller than the 30x30 kernel"),
            (
                "flatten,conv(2,3),flatten,linear(3)",
                "conv(2,3): its input is 784 values, not images: it must come before flatten",
            ),
            ("conv(2,3)", "the model ends on 2x26x26: end with flatten and linear"),
            ("flatten,linear(0)", "linear(0): a width of 0"),
            ("flatten,dropout(1.5),linear(10)", "dropout(1.5): the probability 1.5 is not in [0, 1)"),
            (
                "flatten,lin(10)",
                "\"lin(10)\": unknown layer; known: conv, maxpool, avgpool, globalavgpool, batchnorm, relu, tanh, \
                 sigmoid, gelu, leakyrelu, flatten, linear, dropout",
            ),
            (
                "conv(2,3),batchnorm(momentum=2),flatten,linear(3)",
                "batchnorm(momentum=2): the momentum 2 is not in [0, 1]",
            ),
            ("conv(2,3),batchnorm(eps=0),flatten,linear(3)", "batchnorm(eps=0): eps 0 is not a finite number above 0"),
            (
                "conv(2,3),batchnorm(4),flatten,linear(3)",
                "\"batchnorm(4)\": takes only options, as batchnorm(momentum=0.3,eps=1e-3)",
            ),
            ("conv(2,3),batchnorm(gamma=1),flatten,linear(3)", "\"batchnorm(gamma=1)\": unknown option \"gamma\""),
            (
                "flatten,globalavgpool,linear(3)",
                "globalavgpool: its input is 784 values, not images: it must come before flatten",
            ),
            (
                "conv(2,3),gelu(erf),flatten,linear(3)",
                "\"gelu(erf)\": takes nothing, or tanh for the tanh approximation, as gelu(tanh)",
            ),
            ("conv(2,3),leakyrelu(x),flatten,linear(3)", "\"leakyrelu(x)\": the slope is not a number"),
            ("conv(2,3),leakyrelu(inf),flatten,linear(3)", "leakyrelu(inf): the slope inf is not a finite number"),
            ("avgpool(30),flatten,linear(3)", "avgpool(30): its input is 1x28x28, smaller than the 30x30 window"),
            ("conv(6),flatten,linear(10)", "\"conv(6)\": takes output channels and a kernel size, as conv(6,5)"),
            ("conv(6,5,padding=2),flatten,linear(3)", "\"conv(6,5,padding=2)\": unknown option \"padding\""),
            ("conv(6,x),flatten,linear(3)", "\"conv(6,x)\": \"x\" is not a count"),
            ("flatten,linear(10", "\"linear(10\": a parenthesis is not closed"),
            ("flatten,,linear(10)", "\"\": an empty layer"),
        ] {
            let err = SequentialConfig::parse(text, [1, 28, 28]).unwrap_err();
            assert_eq!(err.to_string(), message, "{text}");
        }
    }

    #[test]
    fn lenet_has_pytorchs_names_shapes_and_output() {
        let config = SequentialConfig::parse(SequentialConfig::LENET, [1, 28, 28]).unwrap();
        assert_eq!(config.to_string(), SequentialConfig::LENET);
        let lenet = Sequential::new(&config, &mut rng(0));
        let names: Vec<(&str, &[usize])> = lenet.params().iter().map(|p| (p.name(), p.shape())).collect();
        assert_eq!(
            names,
            [
                ("conv1.weight", &[6, 1, 5, 5][..]),
                ("conv1.bias", &[6]),
                ("conv2.weight", &[16, 6, 5, 5]),
                ("conv2.bias", &[16]),
                ("fc1.weight", &[120, 400]),
                ("fc1.bias", &[120]),
                ("fc2.weight", &[84, 120]),
                ("fc2.bias", &[84]),
                ("fc3.weight", &[10, 84]),
                ("fc3.bias", &[10]),
            ]
        );
        assert_eq!((lenet.input_width(), lenet.classes()), (784, 10));
    }

    thread_local! {
        /// When set, layer lists run every layer on its own.
        pub(super) static UNFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn layers_run_together_give_the_bits_of_layers_run_one_by_one() {
        // Batch normalisations with a ReLU; ReLUs before max poolings whose windows tile the
        // input (12 to 6), overlap (6 to 4) or drop its last row (3 to 1); in training and in
        // evaluation.
        let config = SequentialConfig::parse(
            "conv(4,3,pad=1),relu,maxpool(2),conv(4,3,pad=1,bias=false),batchnorm,relu,conv(4,1),relu,\
             maxpool(3,1),conv(3,2),relu,maxpool(2),flatten,linear(8),batchnorm,relu,linear(3)",
            [1, 12, 12],
        )
        .unwrap();
        let mut model = Sequential::new(&config, &mut rng(2));
        let x = Array2::from_shape_fn((4, 144), |(i, j)| ((i * 13 + j * 7) % 11) as f32 * 0.3 - 1.2);
        let labels = [0, 2, 1, 2];
        /// Runs layers together again when dropped, even by a failing assertion.
        struct Unfused;
        impl Drop for Unfused {
            fn drop(&mut self) {
                UNFUSED.set(false);
            }
        }
        let run = |model: &mut Sequential, unfused: bool| {
            let _reset = Unfused;
            UNFUSED.set(unfused);
            let mut tape = Tape::new();
            let input = tape.input(x.view());
            let logits = model.forward_train(&mut tape, input, &mut rng(3));
            let loss = tape.cross_entropy(logits, &labels);
            let mut grads = crate::Grads::new(model.params());
            tape.backward(loss, model.params(), &mut grads);
            model.track_running_statistics(&tape);
            let bits = |g: Option<&[f32]>| g.map(|g| g.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            let train = (tape.value(logits).mapv(f32::to_bits), grads.iter().map(bits).collect::<Vec<_>>());
            let mut eval = Tape::new();
            let input = eval.input(x.view());
            let logits = model.forward(&mut eval, input);
            let values = |t: &Tape| t.nodes[..t.len].iter().map(|n| n.rows * n.cols).sum::<usize>();
            (train, eval.value(logits).mapv(f32::to_bits), (tape.len() + eval.len(), values(&tape) + values(&eval)))
        };
        let (fused, one_by_one) = (run(&mut model.clone(), false), run(&mut model, true));
        assert_eq!(fused.0.0, one_by_one.0.0, "training logits");
        assert!(one_by_one.0.1.iter().all(Option::is_some), "every parameter has a gradient");
        assert_eq!(fused.0.1, one_by_one.0.1, "gradients");
        assert_eq!(fused.1, one_by_one.1, "evaluation logits, after the running statistics' update");
        // On each tape, per sample: the batch normalisations' ReLUs gone (4x6x6 and 8 values),
        // and the other three ReLUs on pooled values (4x12x12 to 4x6x6, 4x6x6 to 4x4x4, 3x3x3
        // to 3x1x1).
        assert_eq!(fused.2.0 + 2 * 2, one_by_one.2.0, "nodes");
        let per_sample = (144 + 8) + (576 - 144) + (144 - 64) + (27 - 3);
        assert_eq!(fused.2.1 + 2 * 4 * per_sample, one_by_one.2.1, "values");
    }

    #[test]
    fn inference_matches_the_tape_and_files_round_trip() {
        let config = SequentialConfig::parse(
            "conv(3,3,pad=1),relu,maxpool(2),conv(4,3,stride=2,bias=false),relu,flatten,dropout(0.5),linear(5)",
            [2, 9, 8],
        )
        .unwrap();
        let model = Sequential::new(&config, &mut rng(1));
        let x = Array2::from_shape_fn(
            (3, 144),
            |(i, j)| if (i * 7 + j) % 3 == 0 { ((i + j) % 5) as f32 * 0.2 } else { 0.0 },
        );
        // Inference is the same forward pass, on a tape that keeps nothing for a backward one.
        let mut tape = Tape::new();
        let input = tape.input(x.view());
        let logits = model.forward(&mut tape, input);
        assert_eq!(tape.value(logits), model.logits(x.view()));
        let mut inference = Tape::for_inference();
        assert_eq!(model.logits_with(x.view(), &mut inference), tape.value(logits));
        assert!(
            inference.nodes[..inference.len].iter().all(|n| !n.needs_grad && n.grad.is_empty() && n.aux.is_empty())
        );

        let back =
            Sequential::from_state_dict(&StateDict::from_safetensors(&model.state_dict().to_safetensors()).unwrap())
                .unwrap();
        assert_eq!((back.config(), back.params()), (model.config(), model.params()));
        assert_eq!(back.logits(x.view()), model.logits(x.view()));
    }

    #[test]
    #[should_panic(expected = "keeps nothing for a backward pass")]
    fn an_inference_tape_refuses_a_backward_pass() {
        let model = Sequential::new(&SequentialConfig::parse("flatten,linear(3)", [1, 1, 4]).unwrap(), &mut rng(0));
        let mut tape = Tape::for_inference();
        let x = tape.input(Array2::ones((2, 4)).view());
        let logits = model.forward(&mut tape, x);
        let loss = tape.cross_entropy(logits, &[0, 1]);
        tape.backward(loss, model.params(), &mut crate::Grads::new(model.params()));
    }

    #[test]
    fn a_list_without_parameters_is_refused() {
        // It would end flat and as wide as the classes, and have nothing to train.
        for list in ["flatten", "dropout(0.3),flatten", "flatten,relu"] {
            let err = SequentialConfig::parse(list, [1, 1, 3]).unwrap_err().to_string();
            assert!(err.contains("no layer has parameters"), "{list}: {err}");
        }
    }

    #[test]
    fn layers_before_the_first_parameters_make_it_read_densely() {
        // Dropout, ReLU or pooling before the first layer with parameters: that layer reads
        // their output, not the data, so it takes the dense path (the sparse one would panic).
        for list in
            ["dropout(0.2),flatten,linear(3)", "relu,flatten,linear(3)", "maxpool(2),conv(2,3),relu,flatten,linear(3)"]
        {
            let config = SequentialConfig::parse(list, [1, 8, 8]).unwrap();
            let model = Sequential::new(&config, &mut rng(2));
            let x = Array2::from_shape_fn((4, 64), |(i, j)| if (i + j) % 3 == 0 { 0.5 } else { 0.0 });
            let mut tape = Tape::new();
            let input = tape.input(x.view());
            let logits = model.forward_train(&mut tape, input, &mut rng(3));
            let loss = tape.cross_entropy(logits, &[0, 1, 2, 0]);
            let mut grads = crate::Grads::new(model.params());
            tape.backward(loss, model.params(), &mut grads);
            assert!(tape.value(loss)[[0, 0]].is_finite(), "{list}");
            let mut tape = Tape::new();
            let input = tape.input(x.view());
            let logits = model.forward(&mut tape, input);
            assert_eq!(tape.value(logits), model.logits(x.view()), "{list}");
        }
    }

    #[test]
    fn an_mlp_is_a_sequence_and_saves_as_mlps_always_have() {
        let mlp_config = MlpConfig { widths: vec![16, 8, 5, 3], output_relu: true };
        let config = SequentialConfig::mlp([1, 4, 4], &mlp_config);
        assert_eq!(config.to_string(), "flatten,linear(8),relu,linear(5),relu,linear(3),relu");
        assert_eq!(config.as_mlp(), Some(mlp_config.clone()));
        let (seq, mlp) = (Sequential::new(&config, &mut rng(2)), Sequential::mlp(&mlp_config, &mut rng(2)));
        assert_eq!(seq.params(), mlp.params());

        // The file MLPs have always had: PyTorch's names and shapes, the MLP's metadata, and
        // the input's shape beside it.
        let state = seq.state_dict();
        assert_eq!(state.len(), 6);
        for (name, shape) in mlp_config.param_shapes() {
            assert_eq!(state.get(&name).map(crate::Tensor::shape), Some(&shape[..]), "{name}");
        }
        assert_eq!(
            ["format", "widths", "output_relu", "input"].map(|k| state.meta(k)),
            [Some("mnist-mlp"), Some("16,8,5,3"), Some("true"), Some("1,4,4")]
        );
        assert_eq!(MlpConfig::from_state_dict(&state).unwrap(), mlp_config);
        // It loads as a sequence, and so does a file without the input's shape (as the first
        // versions wrote them): then rows of 16 values.
        assert_eq!(Sequential::from_state_dict(&state).unwrap().config(), &config);
        let mut first = StateDict::new();
        for name in state.names() {
            first.insert(name, state.get(name).unwrap().clone());
        }
        for key in ["format", "widths", "output_relu"] {
            first.set_meta(key, state.meta(key).unwrap());
        }
        let old = Sequential::from_state_dict(&first).unwrap();
        assert_eq!((old.params(), old.config().input), (seq.params(), [1, 1, 16]));
        assert_eq!(
            SequentialConfig::parse("flatten,linear(3),relu,linear(2)", [1, 1, 5]).unwrap().as_mlp().unwrap().widths,
            [5, 3, 2]
        );
        assert_eq!(SequentialConfig::parse("flatten,linear(3),linear(2)", [1, 1, 5]).unwrap().as_mlp(), None);
    }
}
