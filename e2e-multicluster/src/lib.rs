//! Multi-cluster scenarios run against `isthmus lab`, through the same
//! library code as the CLI (`isthmus-lab`): [`Lab::up`] is `isthmus lab up`,
//! dropping it is `isthmus lab down`.
//!
//! The lab runs the real `isthmus` binary as processes. `cargo test
//! --workspace` builds it before any test runs (the CLI crate has
//! integration tests); [`isthmus_binary`] finds it next to the test
//! executable.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_lab::LabSpec;
use isthmus_lab::lab::{self, UpOptions};

/// The `isthmus` binary of this build (`target/<profile>/isthmus`).
pub fn isthmus_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ISTHMUS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/isthmus
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("isthmus");
    assert!(
        bin.exists(),
        "{} is missing: run the scenarios with `cargo test --workspace` (which builds it) \
         or `cargo build -p isthmus-cli` first, or set ISTHMUS_BIN",
        bin.display()
    );
    bin
}

/// A running lab in a temporary directory; stopped (and checked to have
/// left no process) on [`Lab::down`], stopped on drop.
#[derive(Debug)]
pub struct Lab {
    pub spec: LabSpec,
    dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A directory removed on drop.
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Lab {
    /// `isthmus lab up --clusters <clusters> --net-base <net_base>`.
    pub async fn up(clusters: &[&str], net_base: u8) -> anyhow::Result<Lab> {
        let dir =
            std::env::temp_dir().join(format!("isthmus-e2e-{}-{net_base}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let spec = LabSpec {
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            net_base,
            dir: dir.clone(),
        };
        let opts = UpOptions {
            binary: isthmus_binary(),
            timeout: Duration::from_secs(120),
        };
        let mut out = Vec::new();
        let r = lab::up(&spec, &opts, &mut out).await;
        eprintln!("{}", String::from_utf8_lossy(&out));
        r?;
        let spec: LabSpec = serde_json::from_str(&std::fs::read_to_string(dir.join("spec.json"))?)?;
        Ok(Lab {
            spec,
            dir: Some(tempfile_dir::TempDir(dir)),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// `isthmus lab down`, then checks that no process of the lab is left.
    pub async fn down(mut self) -> anyhow::Result<()> {
        let state = isthmus_lab::state::LabState::load(&self.spec.state_file())?;
        lab::down(self.dir(), &mut std::io::sink()).await?;
        if let Some(state) = state {
            let mut left = Vec::new();
            if isthmus_lab::state::alive(state.supervisor_pid) {
                left.push(format!("supervisor {}", state.supervisor_pid));
            }
            for c in &state.components {
                if let Some(pid) = c.pid
                    && isthmus_lab::state::alive(pid)
                {
                    left.push(format!("{} {pid}", c.id));
                }
            }
            anyhow::ensure!(
                left.is_empty(),
                "processes left after lab down: {}",
                left.join(", ")
            );
        }
        self.dir.take();
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.dir.is_some() {
            // Best effort when a test failed before `down`.
            let dir = self.spec.dir.clone();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(lab::down(&dir, &mut std::io::sink()));
                }
            })
            .join();
        }
    }
}
