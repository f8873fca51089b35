//! Compiles `proto/shopfloor.proto` with a pure-Rust parser (protox), so no system `protoc` is
//! needed on a fresh machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/shopfloor.proto");
    let fds = protox::compile(["proto/shopfloor.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
