//! `mnist train`'s flags: defaults, validation, recipes and what `--resume` refuses, through
//! [`cli::parse_train`], which validates a command line as the program does.

use std::path::PathBuf;

use cli::{NewRun, Start, TrainConfig};
use optim::{AdamConfig, OptimizerConfig, WeightDecay};
use train::{Architecture, Settings};

fn parse(args: &[&str]) -> Result<TrainConfig, String> {
    cli::parse_train(args).map_err(|e| e.0)
}

fn new_run(args: &[&str]) -> NewRun {
    match parse(args).unwrap().start {
        Start::New(run) => *run,
        Start::Resume(_) => panic!("not a new run"),
    }
}

#[test]
fn defaults_are_the_notebooks_recipe() {
    let c = parse(&[]).unwrap();
    let run = new_run(&[]);
    assert_eq!(run.architecture, Architecture::Mlp { hidden: vec![128, 64, 32], output_relu: false });
    assert_eq!((c.epochs, run.settings.batch_size), (10, 64));
    assert_eq!(run.settings, Settings::default());
    assert_eq!(run.settings.optimizer, OptimizerConfig::Adam(AdamConfig::default()));
    assert_eq!(c.data_dir, PathBuf::from("data/mnist"));
}

#[test]
fn bad_values_name_their_flag() {
    for (args, message) in [
        (&["--batch-size", "0"][..], "--batch-size must be at least 1, got 0"),
        (&["--epochs", "-3"], "--epochs must be at least 1, got -3"),
        (&["--lr", "0"], "--lr must be a finite number above 0, got 0"),
        (&["--lr", "-1"], "--lr must be a finite number above 0, got -1"),
        (&["--lr", "inf"], "--lr must be a finite number above 0, got inf"),
        (&["--lr", "NaN"], "--lr must be a finite number above 0, got NaN"),
        (&["--hidden", "128,0,32"], "--hidden \"128,0,32\": a width of 0"),
        (&["--hidden", "128,,32"], "--hidden \"128,,32\": \"\" is not a width"),
        (&["--val-split", "1"], "--val-split must be in [0, 1), got 1"),
        (&["--val-split", "-0.1"], "--val-split must be in [0, 1), got -0.1"),
        (&["--early-stop", "3"], "--early-stop needs a validation set: add --val-split FRACTION"),
        (&["--val-split", "0.1", "--early-stop", "0"], "--early-stop must be at least 1, got 0"),
        (&["--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
        (&["--optimizer", "sgd", "--momentum", "-1"], "--momentum must be a finite number of at least 0, got -1"),
        (&["--weight-decay", "nan"], "--weight-decay must be a finite number of at least 0, got NaN"),
        (&["--threads", "0"], "--threads must be at least 1, got 0"),
        (&["--schedule", "cosine", "--gamma", "-5"], "--gamma must be a finite number above 0, got -5"),
        (&["--schedule", "step", "--min-lr", "-1"], "--min-lr must be a finite number of at least 0, got -1"),
        (&["--gamma", "0.5"], "--gamma applies to --schedule step only"),
        (&["--schedule", "cosine", "--step-epochs", "3"], "--step-epochs applies to --schedule step only"),
        (&["--recipe", "strong", "--min-lr", "0"], "--min-lr applies to --schedule cosine only"),
        (&["--schedule", "cosine", "--min-lr", "0.5"], "--min-lr must not be above the learning rate (0.001), got 0.5"),
        (&["--optimizer", "sgd", "--momentum", "1.5"], "--momentum must be below 1, got 1.5"),
        (&["--augment", "--rotate", "400"], "--rotate must be in [0, 180], got 400"),
        (&["--threads", "1000000"], "--threads must be at most 1024, got 1000000"),
    ] {
        assert_eq!(parse(args).unwrap_err(), message, "{args:?}");
    }
}

#[test]
fn optimizers_and_widths_are_configured() {
    let run = new_run(&["--optimizer", "sgd", "--momentum", "0.9", "--weight-decay", "0.01", "--lr", "0.1"]);
    let OptimizerConfig::Sgd(s) = run.settings.optimizer else { panic!() };
    assert_eq!((s.lr, s.momentum, s.weight_decay), (0.1, 0.9, WeightDecay::L2(0.01)));
    let run = new_run(&["--optimizer", "adamw"]);
    assert_eq!(run.settings.optimizer, OptimizerConfig::Adam(AdamConfig::adamw()));
    assert_eq!(run.settings.optimizer.name(), "adamw");
    let hidden = |args: &[&str]| match new_run(args).architecture {
        Architecture::Mlp { hidden, .. } => hidden,
        other => panic!("{other:?}"),
    };
    assert_eq!(hidden(&["--hidden", ""]), Vec::<usize>::new());
    assert_eq!(hidden(&["--hidden", "256, 128"]), vec![256, 128]);
    assert_eq!(new_run(&["--model", "lenet"]).architecture, Architecture::Lenet);
    assert_eq!(new_run(&["--model", "cnn"]).architecture, Architecture::Cnn);
    assert_eq!(
        parse(&["--model", "cnn", "--output-relu"]).unwrap_err(),
        "--hidden and --output-relu shape the MLP, not --model cnn"
    );
    // The strong recipe's length, per model.
    let epochs = |args: &[&str]| parse(&[&["--recipe", "strong"][..], args].concat()).unwrap().epochs;
    assert_eq!(epochs(&["--model", "cnn"]), train::Recipe::STRONG_EPOCHS_CNN);
    assert_eq!(epochs(&["--model", "lenet"]), train::Recipe::STRONG_EPOCHS_CONV);
    assert_eq!(epochs(&["--layers", "conv(2,3),flatten,linear(10)"]), train::Recipe::STRONG_EPOCHS_CONV);
    assert_eq!(epochs(&[]), train::Recipe::STRONG_EPOCHS_MLP);
    assert_ne!(train::Recipe::STRONG_EPOCHS_CNN, train::Recipe::STRONG_EPOCHS_CONV);
    assert_eq!(
        new_run(&["--layers", "flatten,linear(10)"]).architecture,
        Architecture::Layers("flatten,linear(10)".into())
    );
    assert_eq!(
        parse(&["--model", "lenet", "--hidden", "8"]).unwrap_err(),
        "--hidden and --output-relu shape the MLP, not --model lenet"
    );
    assert!(parse(&["--layers", "flatten,linear(10)", "--hidden", "8"]).is_err());
}

#[test]
fn schedules_are_counted_in_the_runs_steps() {
    let run =
        new_run(&["--schedule", "cosine", "--warmup-epochs", "2", "--min-lr", "0.0001", "--label-smoothing", "0.05"]);
    assert_eq!(run.settings.label_smoothing, 0.05);
    let schedule = run.schedule.in_steps(10, 100, 0.001);
    assert_eq!(schedule.to_string(), "warmup(200,0.3333333333333333)+cosine(800,9.999999747378752e-5)");
    let step = new_run(&["--schedule", "step", "--gamma", "0.5"]).schedule.in_steps(9, 10, 0.1);
    assert_eq!(step.to_string(), "step(30,0.5)");
    let one = new_run(&["--schedule", "onecycle", "--lr", "0.01"]).schedule.in_steps(2, 50, 0.01);
    assert_eq!(one.lr(0.01, 29), 0.01, "the peak, 30% of the way");
    assert!(new_run(&[]).schedule.in_steps(10, 938, 0.001).is_constant());
    assert_eq!(parse(&["--label-smoothing", "1"]).unwrap_err(), "--label-smoothing must be below 1, got 1");
    assert_eq!(parse(&["--min-lr", "0.0001"]).unwrap_err(), "--min-lr applies to --schedule cosine only");
}

#[test]
fn the_strong_recipe_expands_and_flags_override_it() {
    let c = parse(&["--recipe", "strong"]).unwrap();
    let Start::New(run) = c.start else { panic!() };
    assert_eq!(c.epochs, 30);
    assert_eq!((run.settings.optimizer.lr(), run.settings.label_smoothing), (3e-3, 0.05));
    assert_eq!(run.settings.augment, Some(data::Augment::default()));
    assert!(run.schedule.in_steps(30, 938, 3e-3).to_string().starts_with("onecycle(0.003"));
    assert_eq!(parse(&["--recipe", "strong", "--model", "lenet"]).unwrap().epochs, 15);
    let c = parse(&["--recipe", "strong", "--epochs", "5", "--lr", "0.01", "--label-smoothing", "0"]).unwrap();
    let Start::New(run) = c.start else { panic!() };
    assert_eq!((c.epochs, run.settings.optimizer.lr(), run.settings.label_smoothing), (5, 0.01, 0.0));
    assert_eq!(parse(&[]).unwrap().epochs, 10);
}

#[test]
fn the_fast_recipe_trains_lenet_unless_a_model_is_named() {
    let c = parse(&["--recipe", "fast"]).unwrap();
    let Start::New(run) = c.start else { panic!() };
    assert_eq!((c.epochs, run.architecture.clone()), (2, train::Architecture::Lenet));
    assert_eq!((run.settings.optimizer.lr(), run.settings.label_smoothing, run.settings.augment), (8e-3, 0.05, None));
    assert!(run.schedule.in_steps(2, 938, 8e-3).to_string().starts_with("onecycle(0.008"));
    assert!(
        run.recipe.as_deref().unwrap().starts_with("fast: --model lenet --epochs 2 --lr 0.008"),
        "{:?}",
        run.recipe
    );
    for (flags, expected) in [
        (&["--model", "cnn"][..], train::Architecture::Cnn),
        (&["--model", "mlp"], train::Architecture::notebook()),
        (&["--hidden", "32"], train::Architecture::Mlp { hidden: vec![32], output_relu: false }),
        (&["--layers", "flatten,linear(10)"], train::Architecture::Layers("flatten,linear(10)".into())),
    ] {
        let c = parse(&[&["--recipe", "fast"][..], flags].concat()).unwrap();
        let Start::New(run) = c.start else { panic!() };
        assert_eq!(run.architecture, expected, "{flags:?}");
        assert!(!run.recipe.unwrap().contains("--model"), "{flags:?}");
    }
}

#[test]
fn a_resumed_run_refuses_flags_that_define_a_run() {
    let c = parse(&["--resume", "x.ckpt", "--epochs", "20", "--threads", "1", "--save", "m"]).unwrap();
    assert_eq!((c.start, c.epochs), (Start::Resume("x.ckpt".into()), 20));
    for flag in [
        &["--lr", "0.001"][..],
        &["--hidden", "128,64"],
        &["--optimizer", "sgd"],
        &["--batch-size", "32"],
        &["--seed", "3"],
        &["--output-relu"],
        &["--val-split", "0.1"],
        &["--early-stop", "5"],
        &["--momentum", "0.5"],
        &["--weight-decay", "0.1"],
        &["--model", "lenet"],
        &["--layers", "flatten,linear(10)"],
        &["--schedule", "cosine"],
        &["--recipe", "strong"],
        &["--label-smoothing", "0.1"],
        &["--warmup-epochs", "1"],
        &["--augment"],
    ] {
        let err = parse(&[&["--resume", "x.ckpt"], flag].concat()).unwrap_err();
        let resumed = "cannot be used with --resume: a resumed run keeps the settings it was started with";
        assert_eq!(err, format!("{} {resumed}", flag[0]), "{flag:?}");
    }
}
