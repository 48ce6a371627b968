//! Bad input to `wick embed` / `index` / `search`: clear messages, and the documented fallbacks.
//! Uses the tiny fixture models (tests/fixtures/embed/tiny) so each case runs in well under a second.

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use wick::embed::Embedder;

const E5: &str = "tests/fixtures/embed/tiny/e5-mean";
const XLMR: &str = "tests/fixtures/embed/tiny/xlmr";

fn wick(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .output()
        .expect("running wick");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn empty_input_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.txt", "");
    let (ok, _, stderr) = wick(&["embed", "--model", E5, "--input", &empty]);
    assert!(!ok);
    assert!(
        stderr.contains("empty.txt") && stderr.contains("empty"),
        "{stderr}"
    );
    let blank = write(dir.path(), "blank.txt", "\n  \n\t\n");
    let (ok, _, stderr) = wick(&[
        "index", "--model", E5, "--corpus", &blank, "--out", "unused",
    ]);
    assert!(!ok);
    assert!(stderr.contains("no text to embed"), "{stderr}");
}

#[test]
fn invalid_jsonl_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "texts.jsonl",
        "{\"text\": \"ok\"}\n{\"text\": \"also ok\"}\n{\"text\": oops}\n",
    );
    let (ok, _, stderr) = wick(&["embed", "--model", E5, "--input", &input]);
    assert!(!ok);
    assert!(
        stderr.contains("texts.jsonl:3") && stderr.contains("invalid JSON"),
        "{stderr}"
    );
    let input = write(
        dir.path(),
        "fields.jsonl",
        "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n",
    );
    let (ok, _, stderr) = wick(&["embed", "--model", E5, "--input", &input]);
    assert!(!ok);
    assert!(
        stderr.contains("fields.jsonl:2") && stderr.contains("no `text` field"),
        "{stderr}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn missing_pooling_config_falls_back_to_mean_with_a_warning() {
    // e5-mean pools by mean, so the fallback must reproduce its embeddings exactly.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model-without-pooling");
    copy_dir(Path::new(E5), &model);
    std::fs::remove_file(model.join("1_Pooling/config.json")).unwrap();
    let texts = ["a cat sat on the mat", "Café crème brûlée à Zürich"];
    let with = Embedder::load(E5, &Device::Cpu)
        .unwrap()
        .embed(&texts)
        .unwrap();
    let without = Embedder::load(model.to_str().unwrap(), &Device::Cpu)
        .unwrap()
        .embed(&texts)
        .unwrap();
    let diff: f32 = (with - without)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);

    let input = write(dir.path(), "texts.txt", "one text\n");
    let (ok, _, stderr) = wick(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        &input,
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("no pooling config") && stderr.contains("mean pooling"),
        "{stderr}"
    );
}

#[test]
fn index_from_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write(
        dir.path(),
        "corpus.txt",
        "a cat sat on the mat\nthe striker scored\n",
    );
    let index = dir.path().join("index");
    let index = index.to_str().unwrap();
    let (ok, _, stderr) = wick(&["index", "--model", E5, "--corpus", &corpus, "--out", index]);
    assert!(ok, "{stderr}");
    // Same width (32), different model: only the fingerprint tells them apart.
    let (ok, _, stderr) = wick(&[
        "search", "--model", XLMR, "--index", index, "--query", "cat",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("built with model `e5-mean`") && stderr.contains("`xlmr`"),
        "{stderr}"
    );
    // Without --model the index's own model is used.
    // (A random tiny model: which text wins is not the point here.)
    let (ok, stdout, stderr) =
        wick(&["search", "--index", index, "--query", "cat", "--top-k", "1"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("a cat sat on the mat") || stdout.contains("the striker scored"),
        "{stdout}"
    );
    // Indexing again over an index replaces it; over another non-empty directory is refused.
    let (ok, _, stderr) = wick(&[
        "index", "--model", XLMR, "--corpus", &corpus, "--out", index,
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = wick(&[
        "search", "--model", XLMR, "--index", index, "--query", "cat",
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = wick(&[
        "index",
        "--model",
        XLMR,
        "--corpus",
        &corpus,
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("is not a wick index: refusing to replace it"),
        "{stderr}"
    );
    // A directory that is not an index.
    let (ok, _, stderr) = wick(&[
        "search",
        "--index",
        dir.path().to_str().unwrap(),
        "--query",
        "x",
    ]);
    assert!(!ok);
    assert!(stderr.contains("not a wick index"), "{stderr}");
}
