//! Shared by the `wick serve` tests: seeded adapters for the default model, the `wick` binary, a
//! server process that is killed when dropped, and a Python venv with the `openai` client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use wick::lora::config::TargetModules;
use wick::lora::peft_io::save_adapter;
use wick::lora::{Adapter, LoraConfig};

/// The default chat model's path (fetched on first use, as `wick models fetch` does).
pub fn chat_model() -> PathBuf {
    wick::formats::fetch::ensure_default_chat_model().expect("fetching the default chat model")
}

/// The default embedding model's directory.
pub fn embed_model() -> PathBuf {
    wick::formats::fetch::ensure_default_embedding_model()
        .expect("fetching the default embedding model")
}

/// A rank-`rank` all-linear adapter for a model with these projections, A as PEFT initialises it
/// and B drawn from N(0, 0.03^2), both from `seed`: deterministic, and far enough from zero that
/// greedy outputs change.
pub fn make_adapter(dir: &Path, shapes: &[(String, usize, usize)], seed: u64, rank: usize) {
    save_adapter(&random_adapter(shapes, seed, rank), dir).unwrap();
}

/// The adapter `make_adapter` writes, in memory.
pub fn random_adapter(shapes: &[(String, usize, usize)], seed: u64, rank: usize) -> Adapter {
    let config = LoraConfig {
        r: rank,
        lora_alpha: 2.0 * rank as f64,
        target_modules: TargetModules::parse("all-linear").unwrap(),
        ..LoraConfig::default()
    };
    let adapter = Adapter::init(config, shapes, seed, &Device::Cpu).unwrap();
    for (i, layer) in adapter.layers.iter().enumerate() {
        let (out, r) = layer.b.as_tensor().dims2().unwrap();
        let b = wick::check::random_tensor(
            &[out, r],
            DType::F32,
            &Device::Cpu,
            seed * 1000 + i as u64,
            0.03,
        )
        .unwrap();
        layer.b.set(&b).unwrap();
    }
    adapter
}

/// The projections of the default model.
pub fn default_model_shapes() -> Vec<(String, usize, usize)> {
    let model = wick::generate::TextModel::open(&chat_model(), &Default::default()).unwrap();
    model.model.linear_shapes()
}

/// Keeps `Tensor` in the imports used by every test binary that includes this module.
pub fn _unused(_: Tensor) {}

/// A running `wick serve`, killed (and reaped) when dropped.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl ServerProcess {
    /// Starts `wick serve --port 0 ARGS` and waits for its "listening on" line.
    pub fn start(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wick"))
            .arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env("WICK_LOG", "wick=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting wick serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Reads stderr to the end (so the server never blocks on a full pipe), passing on the address.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                if std::env::var_os("WICK_TEST_SERVER_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let mut server = Self {
            child,
            base: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(base) => server.base = base,
            Err(_) => panic!("wick serve did not print its address within 120 s"),
        }
        server
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python with the `openai` package: a venv under the test's target tmp dir, made once with
/// `python3 -m venv` and `pip install openai`. Panics with the reason when that is not possible:
/// the test must not pass without the real client.
pub fn openai_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-openai-venv");
    let python = venv.join("bin").join("python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import openai"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 is needed for the serve test (the openai client runs in it)");
    assert!(
        status.success(),
        "python3 -m venv {} failed",
        venv.display()
    );
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "openai>=1.40,<3"])
        .output()
        .expect("running pip");
    assert!(
        out.status.success() && ready(&python),
        "pip install openai failed (the serve test needs the real openai client from PyPI):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// Runs tests/serve_support/openai_client.py COMMAND against a server; its JSON answer.
pub fn client(
    python: &Path,
    base: &str,
    key: &str,
    command: &str,
    args: serde_json::Value,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_support/openai_client.py");
    let out = Command::new(python)
        .arg(script)
        .args([base, key, command, &args.to_string()])
        .output()
        .expect("running the openai client script");
    assert!(
        out.status.success(),
        "openai client `{command}` failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client `{command}` printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `wick generate ARGS` (greedy); the generated text (stdout without its final newline).
pub fn wick_generate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .arg("generate")
        .args(["--temperature", "0"])
        .args(args)
        .output()
        .expect("running wick generate");
    assert!(
        out.status.success(),
        "wick generate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}
