//! Generates the protobuf messages and ttrpc services from `protos/` into
//! OUT_DIR, so no generated code is checked in and none can drift.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

/// Proto files, by stem; each yields `<stem>.rs` and `<stem>_ttrpc.rs`.
const PROTOS: &[&str] = &["health", "agent", "containers"];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let proto_dir = Path::new("protos");

    let inputs: Vec<PathBuf> = PROTOS
        .iter()
        .map(|stem| proto_dir.join(format!("{stem}.proto")))
        .collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    Codegen::new()
        .out_dir(&out_dir)
        .inputs(&inputs)
        .include(proto_dir)
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            // The agent is a small synchronous PID 1; the shim can wrap the
            // sync client where it needs async.
            async_all: false,
            gen_mod: false,
            ..Default::default()
        })
        .run()
        .expect("generating ttrpc code from protos/");

    write_module_index(&out_dir);
}

/// Generated files start with inner attributes (`#![allow(..)]`), which
/// `include!` cannot place inside a `mod {}` block, so lib.rs includes this
/// index of `#[path]` modules instead.
fn write_module_index(out_dir: &Path) {
    let mut index = String::new();
    for stem in PROTOS {
        for module in [stem.to_string(), format!("{stem}_ttrpc")] {
            let file = out_dir.join(format!("{module}.rs"));
            assert!(file.exists(), "codegen did not produce {}", file.display());
            writeln!(
                index,
                "#[path = {:?}]\npub mod {module};",
                file.display().to_string()
            )
            .expect("writing to a String cannot fail");
        }
    }
    fs::write(out_dir.join("modules.rs"), index).expect("writing OUT_DIR/modules.rs");
}
