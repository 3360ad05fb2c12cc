//! The README, checked: every `console` block is run, command by command and in order,
//! against one fresh member with stock etcdctl and cairnctl, and must print what the README
//! shows (`…` stands for what differs between runs); every `rust` block is the text of
//! `examples/src/readme.rs`, which the build compiles.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::console::{blocks, fits, learn_lease_ids, steps};
use crate::harness::{etcdctl_binary, reference, Process};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_readme_rust_blocks_are_the_compiled_examples() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let source = std::fs::read_to_string(root().join("examples/src/readme.rs")).expect("readme.rs");
    let regions: Vec<String> = source
        .split("    // README: ")
        .skip(1)
        .filter(|r| !r.starts_with("end"))
        .map(|r| {
            let body = r.split_once('\n').map_or("", |(_, b)| b);
            body.lines()
                .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
                .collect()
        })
        .collect();
    let rust = blocks(&readme, "```rust");
    assert_eq!(rust.len(), regions.len(), "one README block per region");
    for (i, (block, region)) in rust.iter().zip(&regions).enumerate() {
        assert_eq!(
            block, region,
            "README rust block {i} differs from examples/src/readme.rs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_console_blocks_print_what_they_show_on_a_fresh_member() {
    let Some(etcdctl) = reference(etcdctl_binary(), "etcdctl") else {
        return;
    };
    let member = Process::cairn().await;
    let bin = tempfile::tempdir().expect("dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_cairnctl-under-test"),
        bin.path().join("cairnctl"),
    )
    .expect("link cairnctl");
    std::os::unix::fs::symlink(&etcdctl, bin.path().join("etcdctl")).expect("link etcdctl");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let endpoint = member.addr.to_string();
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    // What the README names that a run names otherwise (lease ids): README → this run.
    let mut names: Vec<(String, String)> = Vec::new();
    let rename = |s: &str, names: &[(String, String)]| {
        names
            .iter()
            .fold(s.to_string(), |s, (from, to)| s.replace(from, to))
    };
    let work = tempfile::tempdir().expect("dir");
    for block in blocks(&readme, "```console") {
        for step in steps(&block) {
            let command = rename(&step.command, &names);
            let out = tokio::task::spawn_blocking({
                let (path, endpoint, dir) =
                    (path.clone(), endpoint.clone(), work.path().to_owned());
                move || {
                    Command::new("bash")
                        .arg("-c")
                        .arg(format!("{command} 2>&1"))
                        .current_dir(dir)
                        .env("PATH", path)
                        .env("ETCDCTL_API", "3")
                        .env("ETCDCTL_ENDPOINTS", &endpoint)
                        .env("CAIRNCTL_ENDPOINTS", &endpoint)
                        .output()
                        .expect("bash")
                }
            })
            .await
            .expect("command");
            let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with("{\"level\":"))
                .map(str::to_string)
                .collect();
            let expected: Vec<String> = step.expected.iter().map(|l| rename(l, &names)).collect();
            learn_lease_ids(&expected, &printed, &mut names);
            let expected: Vec<String> = expected.iter().map(|l| rename(l, &names)).collect();
            let ok = expected.len() == printed.len()
                && expected.iter().zip(&printed).all(|(w, g)| fits(w, g));
            assert!(
                ok,
                "README command `{}` printed\n{}\nbut the README shows\n{}",
                step.command,
                printed.join("\n"),
                expected.join("\n")
            );
        }
    }
}
