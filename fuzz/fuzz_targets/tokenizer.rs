//! Fuzzes `tokenizer.json` and the chat template of `tokenizer_config.json`: the input is the two
//! files joined by `common::SPLIT`. `TextTokenizer::from_files`, encode/decode of a few strings
//! (ASCII, accents, CJK, emoji, specials), `ChatTemplate::from_tokenizer_config` and a rendered
//! conversation with and without the generation prompt; the template alone is also compiled from the
//! second half as raw Jinja (`chat_template.jinja`). A panic, abort, runaway allocation or hang is a bug.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wick::formats::{ChatMessage, ChatTemplate, TextTokenizer};

const TEXTS: [&str; 4] = [
    "Hello wörld, 12 tokens!",
    "東京は日本の首都です。🎉",
    "<|im_start|>user\nhi<|im_end|>",
    "",
];

fn tokenizer(dir: &std::path::Path) {
    let Ok(tok) = TextTokenizer::from_files(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
    ) else {
        return;
    };
    for text in TEXTS {
        for bos in [false, true] {
            if let Ok(ids) = tok.encode(text, bos) {
                let _ = tok.decode(&ids);
                let _ = tok.decode_skip_special(&ids);
            }
        }
    }
    let _ = tok.decode(&[0, 1, 2, 3, u32::MAX]);
    let _ = tok.id_to_token(u32::MAX);
    let _ = (
        tok.vocab_size(),
        tok.bos_token(),
        tok.eos_token(),
        tok.add_bos(),
    );
}

fn render(template: &ChatTemplate) {
    let messages = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "4"),
        ChatMessage::new("user", "Thanks"),
    ];
    for generation_prompt in [false, true] {
        let _ = template.render(&messages, generation_prompt, "<s>", "</s>");
    }
}

fuzz_target!(|data: &[u8]| {
    let (tokenizer_json, tokenizer_config) = common::split(data);
    let dir = common::write_dir(
        "tok",
        &[
            ("tokenizer.json", tokenizer_json),
            ("tokenizer_config.json", tokenizer_config),
        ],
    );
    tokenizer(&dir);
    if let Ok(Some(template)) =
        ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))
    {
        render(&template);
    }
    if let Ok(source) = std::str::from_utf8(tokenizer_config) {
        if let Ok(template) = ChatTemplate::new(source) {
            render(&template);
        }
    }
});
