//! Activations other than ReLU, element by element, with their derivatives, as PyTorch defines
//! them: `tanh`, `sigmoid`, GELU (exact, and its tanh approximation) and leaky ReLU.

use std::fmt;

/// An element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x·Φ(x)` with `Φ` the standard normal's distribution function: `nn.GELU()`.
    Gelu,
    /// `x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: `nn.GELU(approximate="tanh")`.
    GeluTanh,
    /// `x` above 0, `slope·x` otherwise: `nn.LeakyReLU(slope)`.
    LeakyRelu(f32),
}

impl Activation {
    /// `√(2/π)`, the scale inside GELU's tanh approximation.
    pub const GELU_TANH_SCALE: f64 = 0.797_884_560_802_865_4;
    /// The weight of the cubic term inside GELU's tanh approximation.
    pub const GELU_TANH_CUBIC: f64 = 0.044_715;

    /// The activation of `x`. GELU is computed in f64 and rounded once.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Tanh => x.tanh(),
            // exp(-x) overflows to infinity for x below about -88: 1/inf is the right 0.
            Self::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Self::Gelu => {
                let x = f64::from(x);
                (0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
            }
            Self::GeluTanh => {
                let x = f64::from(x);
                (0.5 * x * (1.0 + (Self::GELU_TANH_SCALE * (x + Self::GELU_TANH_CUBIC * x * x * x)).tanh())) as f32
            }
            Self::LeakyRelu(slope) => {
                if x > 0.0 {
                    x
                } else {
                    slope * x
                }
            }
        }
    }

    /// `dy/dx` at `x`, where `y` is [`Self::apply`]'s value there (tanh and the sigmoid use it,
    /// as PyTorch's backward does).
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            Self::Tanh => 1.0 - y * y,
            Self::Sigmoid => y * (1.0 - y),
            Self::Gelu => {
                let x = f64::from(x);
                let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
                let pdf =
                    (-0.5 * x * x).exp() * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
                (cdf + x * pdf) as f32
            }
            Self::GeluTanh => {
                let x = f64::from(x);
                let t = (Self::GELU_TANH_SCALE * (x + Self::GELU_TANH_CUBIC * x * x * x)).tanh();
                (0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * Self::GELU_TANH_SCALE * (1.0 + 3.0 * Self::GELU_TANH_CUBIC * x * x))
                    as f32
            }
            // PyTorch's leaky_relu_backward: the slope at 0 and below.
            Self::LeakyRelu(slope) => {
                if x > 0.0 {
                    1.0
                } else {
                    slope
                }
            }
        }
    }
}

impl fmt::Display for Activation {
    /// The name a layer list writes: `tanh`, `sigmoid`, `gelu`, `gelu(tanh)`, `leakyrelu(0.01)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tanh => f.write_str("tanh"),
            Self::Sigmoid => f.write_str("sigmoid"),
            Self::Gelu => f.write_str("gelu"),
            Self::GeluTanh => f.write_str("gelu(tanh)"),
            Self::LeakyRelu(slope) => write!(f, "leakyrelu({slope})"),
        }
    }
}

/// `y = f(x)`, element by element.
///
/// # Panics
/// If the lengths differ.
#[track_caller]
pub fn activation(f: Activation, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "{f}: {} inputs for {} outputs", x.len(), y.len());
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = f.apply(x));
}

/// `dx = beta·dx + dy·f'(x)`, given `y = f(x)`.
///
/// # Panics
/// If the lengths differ.
#[track_caller]
pub fn activation_backward(f: Activation, x: &[f32], y: &[f32], dy: &[f32], beta: f32, dx: &mut [f32]) {
    let n = x.len();
    assert!(
        y.len() == n && dy.len() == n && dx.len() == n,
        "{f} backward: lengths {n}, {}, {}, {}",
        y.len(),
        dy.len(),
        dx.len()
    );
    for (((dx, &x), &y), &dy) in dx.iter_mut().zip(x).zip(y).zip(dy) {
        let g = dy * f.derivative(x, y);
        *dx = if beta == 0.0 { g } else { beta * *dx + g };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every derivative against a central difference in f64 of the activation itself.
    #[test]
    fn derivatives_match_finite_differences() {
        for f in
            [Activation::Tanh, Activation::Sigmoid, Activation::Gelu, Activation::GeluTanh, Activation::LeakyRelu(0.1)]
        {
            for x in [-3.0f32, -1.2, -0.3, 0.25, 0.9, 2.7] {
                let h = 1e-3f32;
                let numeric = (f.apply(x + h) - f.apply(x - h)) / (2.0 * h);
                let analytic = f.derivative(x, f.apply(x));
                assert!((numeric - analytic).abs() < 2e-3, "{f} at {x}: {analytic} vs {numeric}");
            }
        }
    }

    #[test]
    fn gelu_is_x_times_the_normal_cdf() {
        // Φ(1) = 0.841344746..., Φ(-1) = 0.158655254...
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-7);
        assert!((Activation::Gelu.apply(-1.0) + 0.158_655_25).abs() < 1e-7);
        assert_eq!(Activation::Sigmoid.apply(-200.0), 0.0);
        assert_eq!(Activation::Sigmoid.apply(200.0), 1.0);
    }
}
