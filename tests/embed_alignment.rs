//! `wick embed` / `wick index` keep one output record per input line (issue 17): empty lines are the
//! empty text, JSONL ids are copied through, and an unreadable line is an error naming file and line
//! or, with --skip-bad-lines, an error record in its place (a NaN row plus `<out>.errors.jsonl` for
//! .npy; a left-out row listed in the manifest for an index, whose rows keep their line and id).
//! Uses the tiny fixture model so that each case runs in well under a second.

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use serde_json::Value;
use wick::embed::Embedder;

const E5: &str = "tests/fixtures/embed/tiny/e5-mean";

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

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

fn records(jsonl: &str) -> Vec<Value> {
    jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The rows of an f32 .npy matrix written by wick (header: shape (rows, cols)).
fn read_npy(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let cols: usize = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.split(',').nth(1))
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    let values: Vec<f32> = bytes[10 + header_len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    values.chunks(cols).map(<[f32]>::to_vec).collect()
}

/// What the library embeds for `texts` with the passage prompt (the reference for the CLI rows).
fn library_rows(texts: &[&str]) -> Vec<Vec<f32>> {
    let embedder = Embedder::load(E5, &Device::Cpu).unwrap();
    embedder.embed_passages(texts).unwrap().to_vec2().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn plain_text_rows_follow_lines_including_empty_ones() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "texts.txt",
        b"first text\n\nsecond text\n   \nthird\n\n",
    );
    let (ok, stdout, stderr) = wick(&["embed", "--model", E5, "--input", &input]);
    assert!(ok, "{stderr}");
    let got = records(&stdout);
    // Five lines (the trailing blank line after the last record is no record).
    let texts = ["first text", "", "second text", "   ", "third"];
    assert_eq!(got.len(), texts.len());
    let expected = library_rows(&texts);
    for (k, (record, want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(record["line"], k + 1);
        assert_eq!(record["text"], texts[k]);
        let row: Vec<f32> = serde_json::from_value(record["embedding"].clone()).unwrap();
        assert!(max_abs_diff(&row, want) < 1e-5, "line {}", k + 1);
    }
    // The empty text is a real vector ([CLS] [SEP]), not a copy of a neighbour.
    assert!(max_abs_diff(&expected[1], &expected[0]) > 1e-3);
}

#[test]
fn jsonl_ids_are_copied_and_bad_lines_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let content: &[u8] = b"{\"id\": \"a\", \"text\": \"a cat sat\"}\n{\"id\": 2, \"text\": \"\"}\n{\"text\": \"no id\"}\n";
    let input = write(dir.path(), "ok.jsonl", content);
    let (ok, stdout, stderr) = wick(&["embed", "--model", E5, "--input", &input]);
    assert!(ok, "{stderr}");
    let got = records(&stdout);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0]["id"], "a");
    assert_eq!(got[1]["id"], 2);
    assert_eq!(got[1]["text"], "");
    assert!(got[2].get("id").is_none());

    let cases: [(&[u8], &str); 4] = [
        (b"{\"text\": \"ok\"}\n{\"text\": oops}\n", "invalid JSON"),
        (
            b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n",
            "no `text` field",
        ),
        (b"{\"text\": \"ok\"}\n\n{\"text\": \"x\"}\n", "blank line"),
        (b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n", "UTF-8"),
    ];
    for (content, reason) in cases {
        let input = write(dir.path(), "bad.jsonl", content);
        let (ok, _, stderr) = wick(&["embed", "--model", E5, "--input", &input]);
        assert!(!ok);
        assert!(
            stderr.contains("bad.jsonl:2") && stderr.contains(reason),
            "{reason}: {stderr}"
        );
        assert!(stderr.contains("--skip-bad-lines"), "{stderr}");
    }
    let input = write(dir.path(), "bad.txt", b"fine\nnot \xc3 utf-8\n");
    let (ok, _, stderr) = wick(&["embed", "--model", E5, "--input", &input]);
    assert!(!ok);
    assert!(
        stderr.contains("bad.txt:2") && stderr.contains("UTF-8"),
        "{stderr}"
    );
}

const WITH_BAD_LINES: &[u8] = b"{\"id\": \"a\", \"text\": \"a cat sat\"}\n{oops\n{\"id\": \"c\", \"body\": 1}\n{\"id\": \"d\", \"text\": \"the striker scored\"}\n";

#[test]
fn skip_bad_lines_writes_error_records_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "mixed.jsonl", WITH_BAD_LINES);
    let (ok, stdout, stderr) = wick(&[
        "embed",
        "--model",
        E5,
        "--input",
        &input,
        "--skip-bad-lines",
    ]);
    assert!(ok, "{stderr}");
    let got = records(&stdout);
    assert_eq!(got.len(), 4);
    let lines: Vec<u64> = got.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![1, 2, 3, 4]);
    assert!(got[1]["error"].as_str().unwrap().contains("invalid JSON"));
    assert!(got[1].get("embedding").is_none());
    assert_eq!(got[2]["id"], "c");
    assert!(got[2]["error"]
        .as_str()
        .unwrap()
        .contains("no `text` field"));
    assert_eq!(got[3]["id"], "d");
    let expected = library_rows(&["a cat sat", "the striker scored"]);
    let last: Vec<f32> = serde_json::from_value(got[3]["embedding"].clone()).unwrap();
    assert!(max_abs_diff(&last, &expected[1]) < 1e-5);

    // .npy: one row per line, NaN where a line was unreadable, the reasons in the sidecar.
    let npy = dir.path().join("out.npy");
    let npy_str = npy.to_str().unwrap();
    let args = [
        "embed",
        "--model",
        E5,
        "--input",
        &input,
        "--skip-bad-lines",
        "--output",
        npy_str,
    ];
    let (ok, _, stderr) = wick(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("out.npy.errors.jsonl"), "{stderr}");
    let rows = read_npy(&npy);
    assert_eq!(rows.len(), 4);
    assert!(max_abs_diff(&rows[0], &expected[0]) < 1e-5);
    assert!(rows[1].iter().chain(&rows[2]).all(|v| v.is_nan()));
    assert!(max_abs_diff(&rows[3], &expected[1]) < 1e-5);
    let sidecar = dir.path().join("out.npy.errors.jsonl");
    let errors = records(&std::fs::read_to_string(&sidecar).unwrap());
    let rows_listed: Vec<(u64, u64)> = errors
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows_listed, vec![(1, 2), (2, 3)]);

    // A later clean run over the same output removes the stale sidecar.
    let clean = write(dir.path(), "clean.txt", b"one\ntwo\n");
    let (ok, _, stderr) = wick(&[
        "embed", "--model", E5, "--input", &clean, "--output", npy_str,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(read_npy(&npy).len(), 2);
    assert!(!sidecar.exists());
}

#[test]
fn index_rows_keep_line_and_id_and_the_manifest_lists_skipped_lines() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write(dir.path(), "corpus.jsonl", WITH_BAD_LINES);
    let index = dir.path().join("index");
    let index_str = index.to_str().unwrap();
    let (ok, _, stderr) = wick(&[
        "index", "--model", E5, "--corpus", &corpus, "--out", index_str,
    ]);
    assert!(!ok);
    assert!(stderr.contains("corpus.jsonl:2"), "{stderr}");
    let (ok, _, stderr) = wick(&[
        "index",
        "--model",
        E5,
        "--corpus",
        &corpus,
        "--out",
        index_str,
        "--skip-bad-lines",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("left out 2 unreadable line(s)"), "{stderr}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(index.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["count"], 2);
    let skipped: Vec<u64> = manifest["skipped_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(skipped, vec![2, 3]);
    let rows = records(&std::fs::read_to_string(index.join("texts.jsonl")).unwrap());
    assert_eq!(rows[0]["line"], 1);
    assert_eq!(rows[0]["id"], "a");
    assert_eq!(rows[1]["line"], 4);
    assert_eq!(rows[1]["id"], "d");
    let opened = wick::embed::Index::open(&index).unwrap();
    assert_eq!(opened.sources[1].line, 4);
    assert_eq!(opened.texts[1], "the striker scored");
}
