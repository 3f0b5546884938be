//! Compiles the official `proto/onnx.proto` into Rust types with prost-build, using the
//! pure-Rust protox compiler (no `protoc` binary needed). The message documentation is
//! onnx.proto itself.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // onnx.proto's comments are not Rust docs: their indented lines would become doctests.
        .disable_comments(["."])
        .compile_fds(fds)?;
    Ok(())
}
