//! README.md's "Using the reader" shows `examples/hello.rs`, which
//! `cargo build --all-targets` compiles: this keeps the two the same.

/// The example's code, without its leading `//!` doc line(s).
fn example_code() -> String {
    include_str!("../examples/hello.rs")
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn the_readme_shows_the_compiled_pooled_service_in_under_20_lines() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Using the reader")
        .nth(1)
        .expect("README.md has a \"Using the reader\" section");
    let code = example_code();
    let block = format!("```rust\n{code}```\n");
    assert!(
        section.contains(&block),
        "README.md's \"Using the reader\" must show examples/hello.rs:\n{block}"
    );
    assert!(code.lines().count() < 20, "{} lines", code.lines().count());
}
