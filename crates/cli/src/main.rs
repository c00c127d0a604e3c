//! `mnist`: train, evaluate and use MLPs on MNIST. See `mnist --help`.

fn main() -> std::process::ExitCode {
    cli::main()
}
