//! `wick serve` end to end with the real `openai` Python client (PyPI; installed into a venv under
//! the target dir on first run, so the test needs PyPI once): the default model with two adapters
//! given at start and two loaded at run time, an embedding model, an API key.
//!
//! The servers run with `--dtype f32`: the test binary is built in the dev profile, where wick's own
//! AVX2 kernels (the quantized path) are not optimised and run ~3x slower than Candle's f32 gemm.
//! tests/serve_batch_invariance.rs covers the quantized path's batching.
//!
//! - a streamed chat completion, a completion and an embeddings call; greedy outputs equal
//!   `wick generate` with the same adapter;
//! - 404 unknown model, 400 bad JSON / too many tokens / n = 2, 401 without the key, odd bodies
//!   answered (never a crash), a client leaving mid-stream frees its slot (seen in /metrics);
//! - 32 concurrent streaming clients across 4 adapters: 0 errors, every output equal to the same
//!   request run alone;
//! - a second server with one slot and a queue of one: the third request gets 429 + Retry-After;
//! - SIGTERM: the server exits 0. Every server is killed on drop, so none outlives the test.

mod serve_support;

use std::time::Duration;

use serde_json::json;
use serve_support::*;

const KEY: &str = "test-key";
const CHAT: &str = "What is the capital of France?";
const PROMPT: &str = "The three primary colors are";
const MAX_TOKENS: usize = 12;

#[test]
fn openai_client_against_wick_serve() {
    let python = openai_python();
    let model = chat_model();
    let model_arg = model.to_str().unwrap().to_string();
    let embed = embed_model();
    let shapes = default_model_shapes();
    let adapters = tempfile::tempdir().unwrap();
    let names = ["alpha", "beta", "gamma", "delta", "late"];
    for (i, name) in names.iter().enumerate() {
        make_adapter(&adapters.path().join(name), &shapes, 100 + i as u64, 4);
    }
    let path = |name: &str| adapters.path().join(name).to_str().unwrap().to_string();

    let mut server = ServerProcess::start(&[
        "--model".into(),
        model_arg.clone(),
        "--dtype".into(),
        "f32".into(),
        "--adapter".into(),
        format!("alpha={}", path("alpha")),
        "--adapter".into(),
        format!("beta={}", path("beta")),
        "--embed-model".into(),
        embed.to_str().unwrap().into(),
        "--api-key".into(),
        KEY.into(),
        "--max-adapters".into(),
        "4".into(),
        "--max-batch".into(),
        "8".into(),
    ]);
    let embed_id = embed.file_name().unwrap().to_str().unwrap();

    // 1. The three calls, compared with `wick generate` (same adapter, greedy).
    let basics = client(
        &python,
        &server.base,
        KEY,
        "basics",
        json!({ "chat_model": "alpha", "chat": CHAT, "completion_model": "beta", "prompt": PROMPT,
                "max_tokens": MAX_TOKENS, "embed_model": embed_id }),
    );
    let max = MAX_TOKENS.to_string();
    let chat_ref = wick_generate(&[
        "--model",
        &model_arg,
        "--chat",
        CHAT,
        "--adapter",
        &path("alpha"),
        "--max-tokens",
        &max,
    ]);
    let completion_ref = wick_generate(&[
        "--model",
        &model_arg,
        "--prompt",
        PROMPT,
        "--raw",
        "--adapter",
        &path("beta"),
        "--max-tokens",
        &max,
    ]);
    let chat_base = wick_generate(&[
        "--model",
        &model_arg,
        "--dtype",
        "f32",
        "--chat",
        CHAT,
        "--max-tokens",
        &max,
    ]);
    assert_eq!(
        basics["chat"]["text"], chat_ref,
        "streamed chat vs wick generate: {basics}"
    );
    assert_eq!(
        basics["completion"]["text"], completion_ref,
        "completion vs wick generate: {basics}"
    );
    assert_ne!(
        chat_ref, chat_base,
        "the adapter must change the output for the comparison to mean something"
    );
    assert_eq!(basics["chat"]["completion_tokens"], MAX_TOKENS);
    assert_eq!(basics["completion"]["logprob_tokens"], MAX_TOKENS);
    assert_eq!(basics["completion"]["top_len"], 2);
    assert_eq!(basics["multi_turn"]["top"], 3);
    assert!(basics["multi_turn"]["first_logprob"].as_f64().unwrap() <= 0.0);
    assert_eq!(basics["embeddings"], json!([384, 384]));
    assert!((basics["embedding_norm"].as_f64().unwrap() - 1.0).abs() < 1e-3);
    let models = basics["models"].as_array().unwrap();
    for id in ["alpha", "beta", embed_id] {
        assert!(
            models.iter().any(|m| m == id),
            "/v1/models lacks {id}: {models:?}"
        );
    }

    // 2. Load test: 32 streaming clients over 4 adapters (two loaded at run time).
    for name in ["gamma", "delta"] {
        let loaded = client(
            &python,
            &server.base,
            KEY,
            "load_adapter",
            json!({ "name": name, "path": path(name) }),
        );
        assert_eq!(loaded["status"], 200, "loading {name}: {loaded}");
    }
    // WICK_SERVE_LOAD_TOKENS raises the tokens per client for a benchmark run; WICK_SERVE_LOAD_REPORT
    // names a file for the figures (bench/results/serve-cpu.md quotes them).
    let load_tokens: usize = std::env::var("WICK_SERVE_LOAD_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let load = client(
        &python,
        &server.base,
        KEY,
        "load",
        json!({ "models": ["alpha", "beta", "gamma", "delta"], "prompts": [CHAT, "Name a fruit."],
                "max_tokens": load_tokens, "clients": 32 }),
    );
    if let Some(report) = std::env::var_os("WICK_SERVE_LOAD_REPORT") {
        std::fs::write(report, serde_json::to_string_pretty(&load).unwrap()).unwrap();
    }
    assert_eq!(load["clients"], 32);
    assert_eq!(load["errors"], json!([]), "load test errors: {load}");
    assert_eq!(
        load["mismatches"],
        json!([]),
        "outputs differ from their single-request reference: {load}"
    );
    assert!(
        load["distinct_references"].as_u64().unwrap() >= 4,
        "adapters should give different outputs: {load}"
    );
    eprintln!(
        "load test: 32 clients, {} tokens in {:.2} s ({:.1} tok/s), TTFT p50 {} s p99 {} s",
        load["tokens"],
        load["seconds"].as_f64().unwrap(),
        load["tokens_per_second"].as_f64().unwrap(),
        load["ttft_p50"],
        load["ttft_p99"]
    );

    // 3. Errors, run-time adapters (the fifth evicts the least recently used), disconnects.
    let errors = client(
        &python,
        &server.base,
        KEY,
        "errors",
        json!({ "chat_model": "alpha", "late_path": path("late") }),
    );
    assert_eq!(errors["unknown_model"], json!([404, "model"]), "{errors}");
    assert_eq!(
        errors["bad_json"],
        json!([400, "invalid_request_error"]),
        "{errors}"
    );
    assert_eq!(
        errors["too_many_tokens"],
        json!([400, "max_tokens"]),
        "{errors}"
    );
    assert_eq!(errors["n2"], json!([400, "n"]), "{errors}");
    assert_eq!(errors["wrong_key"], 401);
    assert_eq!(errors["no_key"], 401);
    for status in errors["odd_statuses"].as_array().unwrap() {
        let s = status.as_u64().unwrap();
        assert!((400..500).contains(&s), "odd input answered {s}: {errors}");
    }
    assert_eq!(errors["health"], "ok");
    assert_eq!(errors["load"], 200);
    assert_eq!(errors["unload"], 200);
    assert_eq!(errors["unload_again"], 404);
    assert!(
        errors["evictions"].as_f64().unwrap() >= 1.0,
        "a fifth adapter over --max-adapters 4 must evict one: {errors}"
    );
    assert_eq!(errors["cancelled"], 1.0, "{errors}");
    assert!(
        errors["prefix_cached"].as_f64().unwrap() > 0.0,
        "chat requests sharing the system prompt reused no prefix: {errors}"
    );

    // 4. Graceful shutdown: SIGTERM, exit 0.
    let status = server
        .terminate(Duration::from_secs(60))
        .expect("wick serve did not stop within 60 s of SIGTERM");
    assert!(status.success(), "wick serve exited with {status}");

    // 5. A full queue: one slot, a queue of one.
    let small = ServerProcess::start(&[
        "--model".into(),
        model_arg.clone(),
        "--dtype".into(),
        "f32".into(),
        "--max-batch".into(),
        "1".into(),
        "--max-queue".into(),
        "1".into(),
    ]);
    let full = client(&python, &small.base, "unused", "queue_full", json!({}));
    assert_eq!(full["third"], json!([429, "1"]), "{full}");
    assert_eq!(full["rejected"], 1.0, "{full}");
    assert_eq!(
        full["second_done"], true,
        "the queued request runs once the slot frees: {full}"
    );
    drop(small);

    // 6. --max-context: what fits runs, a prompt + max_tokens beyond it is a 400 on max_tokens.
    let capped = ServerProcess::start(&[
        "--model".into(),
        model_arg,
        "--max-context".into(),
        "48".into(),
    ]);
    let limit = client(
        &python,
        &capped.base,
        "unused",
        "context_limit",
        json!({"fits": 8, "too_many": 60}),
    );
    assert_eq!(limit["fits_tokens"], json!(8), "{limit}");
    assert_eq!(limit["too_many"], json!([400, "max_tokens"]), "{limit}");
}
