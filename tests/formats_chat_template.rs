//! Chat templates: SmolLM2's real template (from its GGUF) renders ChatML as transformers renders it,
//! and features HF templates use (pycompat string methods, loop controls, tojson) work.

use wick::formats::{open_model, ChatMessage, ChatTemplate, LoadOptions};

#[test]
fn smollm2_template_renders_chatml() {
    let path = wick::formats::fetch::ensure_default_chat_model().unwrap();
    let files = open_model(&path, &LoadOptions::default()).unwrap();
    let template = files
        .chat_template
        .expect("SmolLM2's GGUF carries tokenizer.chat_template");
    let bos = files.tokenizer.bos_token().unwrap();
    let eos = files.tokenizer.eos_token().unwrap();
    let with_system = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "4."),
        ChatMessage::new("user", "And 3+3?"),
    ];
    assert_eq!(
        template.render(&with_system, true, bos, eos).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    );
    // Without a system message the template inserts SmolLM's default one.
    assert_eq!(
        template.render(&[ChatMessage::new("user", "Hi")], false, bos, eos).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn python_string_methods_and_loop_controls() {
    let source = "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}\
        {{ m.role.upper() }}:{{ m.content.strip().replace('a', 'A') }}{% if m.content.startswith(' x') %}!{% endif %}\
        {% if not loop.last %}|{% endif %}{% endfor %}{% if add_generation_prompt %}>{% endif %}";
    let t = ChatTemplate::new(source).unwrap();
    let messages = [
        ChatMessage::new("user", " xbanana "),
        ChatMessage::new("skip", "no"),
        ChatMessage::new("assistant", "ok"),
    ];
    assert_eq!(
        t.render(&messages, true, "", "").unwrap(),
        "USER:xbAnAnA!|ASSISTANT:ok>"
    );
}

#[test]
fn syntax_errors_are_reported() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("chat template:"), "{err}");
}

/// A template that would loop ~10^10 times (as a hostile or broken tokenizer_config.json can) ends in
/// an error once its instruction budget is spent, instead of hanging generation or training; a long
/// real conversation stays far inside the budget.
#[test]
fn runaway_templates_stop_with_an_error() {
    let runaway = ChatTemplate::new(
        "{% for a in range(99999) %}{% for b in range(99999) %}{{ a }}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let err = runaway
        .render(&[ChatMessage::new("user", "hi")], true, "", "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("fuel"), "{err}");
    let chatml = ChatTemplate::new(
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}\
         {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    )
    .unwrap();
    let long: Vec<ChatMessage> = (0..2000)
        .map(|i| ChatMessage::new(["user", "assistant"][i % 2], format!("message {i}")))
        .collect();
    let text = chatml.render(&long, true, "", "").unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"));
}
