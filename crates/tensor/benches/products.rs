//! The dense matrix products of LeNet-5 and the CNN at their shapes in a training step (32
//! samples per thread; LeNet-5's convolution product covers the samples whose unfolded
//! columns fit the cache, the CNN's Winograd products a group of samples), three ways: this
//! crate's kernels, the `gemm` crate and `matrixmultiply` (which ndarray uses). Each result is checked against ndarray's product before it is timed. Prints
//! one tab-separated line per shape: the median microseconds of each, timed in turns so that
//! a busy machine slows all three alike.
//!
//! This crate's kernels run at the level in force (`MNIST_SIMD`). `gemm` picks its own (AVX2
//! with FMA at most on stable Rust, NEON on ARM) whatever the cap; `matrixmultiply` too, up to
//! AVX-512, unless built with its compile-time cap, as `cargo xtask bench` does for each level:
//!
//! ```sh
//! MNIST_SIMD=avx2 MMTEST_FEATURE=avx2,fma CARGO_TARGET_DIR=target/products-avx2 \
//!     cargo bench -p tensor --bench products
//! ```

use std::fmt;
use std::hint::black_box;
use std::time::Instant;

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    println!("level\t{}", simd::Simd::get());
    println!("shape\tthis crate (µs)\tgemm (µs)\tmatrixmultiply (µs)");
    for &case in CASES {
        let (a, b, c) = operands(case);
        let mut runs: [Box<dyn FnMut() + '_>; 3] = [
            this_crate(case, &a, &b, c.clone()),
            gemm_crate(case, &a, &b, c.clone()),
            matrixmultiply_crate(case, &a, &b, c),
        ];
        let medians = time_in_turns(&mut runs);
        println!("{case}\t{:.1}\t{:.1}\t{:.1}", medians[0], medians[1], medians[2]);
    }
}

/// The median microseconds per call of each of `runs`, over 101 samples taken in turns.
fn time_in_turns(runs: &mut [Box<dyn FnMut() + '_>; 3]) -> [f64; 3] {
    // Calls per sample: enough for about 200 µs with the average of the three.
    let start = Instant::now();
    for _ in 0..20 {
        runs.iter_mut().for_each(|run| run());
    }
    let per_call = start.elapsed().as_secs_f64() / 60.0;
    let calls = ((200e-6 / per_call) as usize).max(1);
    let mut samples = [const { Vec::new() }; 3];
    for _ in 0..101 {
        for (run, samples) in runs.iter_mut().zip(&mut samples) {
            let start = Instant::now();
            (0..calls).for_each(|_| run());
            samples.push(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
        }
    }
    samples.map(|mut s| {
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    })
}

/// Which operand is transposed: `c = a·b` with a `[m, k]` and b `[k, n]`; `a·bᵀ` with b stored
/// `[n, k]`; `aᵀ·b` with a stored `[k, m]`.
#[derive(Clone, Copy)]
enum Form {
    AB,
    ABt,
    AtB,
}

#[derive(Clone, Copy)]
struct Case {
    what: &'static str,
    form: Form,
    m: usize,
    k: usize,
    n: usize,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let form = match self.form {
            Form::AB => "a·b",
            Form::ABt => "a·bᵀ",
            Form::AtB => "aᵀ·b",
        };
        write!(f, "{} {form} {}x{}x{}", self.what, self.m, self.k, self.n)
    }
}

const fn case(what: &'static str, form: Form, m: usize, k: usize, n: usize) -> Case {
    Case { what, form, m, k, n }
}

/// Each layer's forward product, weight gradient and input gradient. The CNN's 3x3 layers
/// take Winograd's method: one of the 16 products per group of samples (one sample's 196
/// tiles on 28x28, two samples' 49 on 14x14).
const CASES: &[Case] = &[
    case("lenet conv2 forward", Form::AB, 16, 150, 800),
    case("lenet conv2 weight grad", Form::ABt, 16, 800, 150),
    case("lenet conv2 input grad", Form::AtB, 150, 16, 800),
    case("lenet fc1 forward", Form::ABt, 32, 400, 120),
    case("lenet fc1 weight grad", Form::AtB, 120, 32, 400),
    case("lenet fc1 input grad", Form::AB, 32, 120, 400),
    case("cnn conv2 winograd forward", Form::AB, 16, 16, 196),
    case("cnn conv2 winograd weight grad", Form::ABt, 16, 196, 16),
    case("cnn conv2 winograd input grad", Form::AtB, 16, 16, 196),
    case("cnn conv4 winograd forward", Form::AB, 32, 32, 98),
    case("cnn conv4 winograd weight grad", Form::ABt, 32, 98, 32),
    case("cnn conv4 winograd input grad", Form::AtB, 32, 32, 98),
    case("cnn fc1 forward", Form::ABt, 32, 1568, 128),
];

/// The operands as stored: `a` and `b` in the layouts of `form`, and `c`.
fn operands(case: Case) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut random = |rows, cols| Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0));
    let Case { form, m, k, n, .. } = case;
    let a = if matches!(form, Form::AtB) { random(k, m) } else { random(m, k) };
    let b = if matches!(form, Form::ABt) { random(n, k) } else { random(k, n) };
    (a, b, Array2::zeros((m, n)))
}

/// This crate's product for `case`, checked once.
fn this_crate<'a>(case: Case, a: &'a Array2<f32>, b: &'a Array2<f32>, mut c: Array2<f32>) -> Box<dyn FnMut() + 'a> {
    let product = match case.form {
        Form::AB => tensor::matmul,
        Form::ABt => tensor::matmul_nt,
        Form::AtB => tensor::matmul_tn,
    };
    product(1.0, a.view(), b.view(), 0.0, c.view_mut());
    check(case, a, b, &c);
    Box::new(move || product(1.0, black_box(a.view()), b.view(), 0.0, c.view_mut()))
}

/// Panics unless `c` is the product `case` describes, within rounding.
fn check(case: Case, a: &Array2<f32>, b: &Array2<f32>, c: &Array2<f32>) {
    let want = match case.form {
        Form::AB => a.dot(b),
        Form::ABt => a.dot(&b.t()),
        Form::AtB => a.t().dot(b),
    };
    let worst = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-3, "{case}: off by {worst}");
}

/// `(rows, columns)` strides of the logical `a` and `b` of `c = a·b`.
fn strides(case: Case) -> ([isize; 2], [isize; 2]) {
    let [m, k, n] = [case.m, case.k, case.n].map(|v| v as isize);
    match case.form {
        Form::AB => ([k, 1], [n, 1]),
        Form::ABt => ([k, 1], [1, k]),
        Form::AtB => ([1, m], [n, 1]),
    }
}

/// The `gemm` crate's product for `case`, single-threaded, checked once.
fn gemm_crate<'a>(case: Case, a: &'a Array2<f32>, b: &'a Array2<f32>, mut c: Array2<f32>) -> Box<dyn FnMut() + 'a> {
    let ([ars, acs], [brs, bcs]) = strides(case);
    let Case { m, k, n, .. } = case;
    let run = move |c: &mut Array2<f32>| {
        // SAFETY: the strides describe `a`, `b` and `c` as `operands` made them.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                black_box(a.as_ptr()),
                acs,
                ars,
                b.as_ptr(),
                bcs,
                brs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    run(&mut c);
    check(case, a, b, &c);
    Box::new(move || run(&mut c))
}

/// `matrixmultiply`'s product for `case`, checked once.
fn matrixmultiply_crate<'a>(
    case: Case,
    a: &'a Array2<f32>,
    b: &'a Array2<f32>,
    mut c: Array2<f32>,
) -> Box<dyn FnMut() + 'a> {
    let ([ars, acs], [brs, bcs]) = strides(case);
    let Case { m, k, n, .. } = case;
    let run = move |c: &mut Array2<f32>| {
        // SAFETY: the strides describe `a`, `b` and `c` as `operands` made them.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                black_box(a.as_ptr()),
                ars,
                acs,
                b.as_ptr(),
                brs,
                bcs,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    };
    run(&mut c);
    check(case, a, b, &c);
    Box::new(move || run(&mut c))
}
