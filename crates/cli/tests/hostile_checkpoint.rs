//! Hostile checkpoint files: arbitrary bytes, truncations and bit flips of valid model and
//! training checkpoints give an error or a consistent model, never a panic, and never make the
//! loader allocate far beyond the input's size. A counting allocator measures the loader's peak
//! allocation, so this file holds a single test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use rand::SeedableRng;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(new_size, Ordering::SeqCst) + new_size;
            PEAK.fetch_max(now, Ordering::SeqCst);
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Two valid files: a model and a training checkpoint of a small MLP.
fn valid_files() -> [Vec<u8>; 2] {
    let dir = tempfile::tempdir().unwrap();
    let config = nn::MlpConfig { widths: vec![6, 5, 3], output_relu: false };
    let mlp = nn::Mlp::new(&config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let model = dir.path().join("m.safetensors");
    cli::checkpoint::save(&model, &mlp, &[("epochs", "1".into())]).unwrap();

    let mut adam = optim::Adam::new(optim::AdamConfig::default()).unwrap();
    let mut grads = nn::Grads::new(mlp.params());
    for id in mlp.params().ids() {
        grads.set(id, &vec![0.1; mlp.params().get(id).value().len()]);
    }
    let mut stepped = mlp.clone();
    optim::Optimizer::step(&mut adam, stepped.params_mut(), &grads).unwrap();
    let flags = cli::RunFlags::default();
    let mut settings = flags.resolve().unwrap();
    settings.hidden = vec![5];
    let state = cli::checkpoint::TrainingState {
        model: stepped,
        settings,
        optimizer: optim::Optimizer::state(&adam),
        epochs_done: 1,
        threads: 2,
        history: Vec::new(),
        best: None,
    };
    let training = dir.path().join("t.ckpt");
    cli::checkpoint::save_training(&training, &state).unwrap();
    [std::fs::read(model).unwrap(), std::fs::read(training).unwrap()]
}

/// The JSON parse of the header and the model built from the tensors, each a few times the
/// input, plus a constant.
fn bound(input: &[u8]) -> usize {
    8 * input.len() + (256 << 10)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn hostile_checkpoints_never_panic_nor_over_allocate(
        which in 0usize..3,
        cut in 0usize..4000,
        flips in proptest::collection::vec(0usize..40_000, 0..4),
        random in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let files = valid_files();
        let mut input = match which {
            0 => random,
            k => files[k - 1].clone(),
        };
        let valid = input.clone();
        for f in flips {
            if !input.is_empty() {
                let i = f % (input.len() * 8);
                input[i / 8] ^= 1 << (i % 8);
            }
        }
        input.truncate(cut.max(1).min(input.len()));

        let base = CURRENT.load(Ordering::SeqCst);
        PEAK.store(base, Ordering::SeqCst);
        let model = cli::checkpoint::parse(&input);
        let training = cli::checkpoint::parse_training(&input);
        let peak = PEAK.load(Ordering::SeqCst) - base;
        prop_assert!(peak <= bound(&input), "{} bytes in, {peak} allocated", input.len());
        if input == valid && which > 0 {
            prop_assert!(model.is_ok());
            prop_assert_eq!(training.is_ok(), which == 2);
        }
        if input.len() < valid.len() && which > 0 {
            prop_assert!(model.is_err() && training.is_err(), "a truncated file loaded");
        }
    }
}
