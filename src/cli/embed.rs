//! `wick embed`, `wick index`, `wick search`: texts to vectors, a saved index, and cosine search.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use candle_core::DType;
use indicatif::{ProgressBar, ProgressStyle};
use wick::embed::corpus::{read_texts, read_texts_with, ReadOptions, Texts};
use wick::embed::{Embedder, EmbedderOptions, Hit, Index, RowSource};

/// Inputs with more texts than this get a progress bar (on a terminal).
const PROGRESS_MIN_TEXTS: usize = 256;

/// Options shared by the three commands.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype of the encoder: f32 (as sentence-transformers), f16 or bf16 (GPUs).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

/// Which prompt to prepend to the input texts.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    /// The model's passage/document prompt (E5: "passage: "); none for most models.
    Passage,
    /// The model's query prompt (E5: "query: ").
    Query,
    /// No prompt.
    None,
}

/// Options of `wick embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {
    /// `default` (all-MiniLM-L6-v2) or a sentence-transformers model directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// One text per line, or JSONL with a `text` field and an optional `id` (`.jsonl`/`.ndjson`).
    /// Every line gets one output row, in order; an empty line is the empty text.
    #[arg(long)]
    pub input: PathBuf,
    /// `.npy` for a float32 matrix (row k = line k + 1), anything else for JSONL
    /// {"line","id","text","embedding"}; stdout if absent.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// A line that cannot be read (bad JSON, no `text`, not UTF-8) gets an error record in its place
    /// instead of stopping: {"line","error"} in JSONL; in .npy a row of NaN, with the lines and
    /// reasons listed in `<output>.errors.jsonl`.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Prompt prepended to each text.
    #[arg(long, value_enum, default_value = "passage")]
    pub prompt: PromptKind,
    #[command(flatten)]
    pub run: ModelArgs,
}

/// Options of `wick index`.
#[derive(clap::Args)]
pub struct IndexArgs {
    /// `default` (all-MiniLM-L6-v2) or a sentence-transformers model directory.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// The texts to index: one per line, or JSONL with a `text` field and an optional `id`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Leave out lines that cannot be read instead of stopping; each row keeps its line number and
    /// `id`, and the left-out lines are listed in the index manifest.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// The index directory to write (replaced atomically if it holds an index).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub run: ModelArgs,
}

/// Options of `wick search`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["corpus", "index"])))]
pub struct SearchArgs {
    /// Model for the query (and the corpus). With --index, defaults to the model that built it.
    #[arg(long)]
    pub model: Option<String>,
    /// Texts to search, embedded on the fly.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// An index made by `wick index`.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// The query.
    #[arg(long)]
    pub query: String,
    /// How many results to print.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[command(flatten)]
    pub run: ModelArgs,
}

fn load_embedder(model: &str, run: &ModelArgs) -> anyhow::Result<Embedder> {
    let device = wick::device::parse_device(&run.device)?;
    let dtype = match run.dtype.to_ascii_lowercase().as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("--dtype `{other}`: expected f32, f16 or bf16"),
    };
    if run.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let options = EmbedderOptions {
        batch_size: run.batch_size,
        dtype,
        ..Default::default()
    };
    Embedder::load_with(model, &device, options)
        .with_context(|| format!("loading embedding model `{model}`"))
}

/// A progress bar over `total` texts, hidden for short inputs and when stderr is not a terminal.
fn progress_bar(total: usize, what: &str) -> ProgressBar {
    if total < PROGRESS_MIN_TEXTS {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} texts ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn embed_texts(
    embedder: &Embedder,
    texts: &Texts,
    prompt: Option<&str>,
) -> anyhow::Result<candle_core::Tensor> {
    let bar = progress_bar(texts.texts.len(), "embedding");
    let (embeddings, _) = embedder.embed_with(&texts.as_strs(), prompt, &mut |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    Ok(embeddings)
}

/// Runs `wick embed`.
pub fn run_embed(args: EmbedArgs) -> anyhow::Result<()> {
    let options = ReadOptions {
        skip_bad_lines: args.skip_bad_lines,
    };
    let texts = read_texts_with(&args.input, options)?;
    let embedder = load_embedder(&args.model, &args.run)?;
    let prompt = match args.prompt {
        PromptKind::Passage => embedder.prompts().passage.clone(),
        PromptKind::Query => embedder.prompts().query.clone(),
        PromptKind::None => None,
    };
    let embeddings = embed_texts(&embedder, &texts, prompt.as_deref())?;
    let rows: Vec<Vec<f32>> = embeddings.to_device(&candle_core::Device::Cpu)?.to_vec2()?;
    match &args.output {
        Some(path) if is_npy(path) => write_npy_with_errors(path, &texts, &rows, embedder.dim())?,
        Some(path) => write_atomically(path, |out| write_jsonl(out, &texts, &rows))?,
        None => write_jsonl(&mut BufWriter::new(std::io::stdout().lock()), &texts, &rows)?,
    }
    if let Some(path) = &args.output {
        eprintln!(
            "wrote {} rows of dimension {} to {} (one per input line{})",
            texts.records(),
            embedder.dim(),
            path.display(),
            if texts.bad.is_empty() {
                String::new()
            } else {
                format!(", {} of them error records", texts.bad.len())
            }
        );
    }
    Ok(())
}

fn is_npy(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// Writes `path` through a temporary file beside it, renamed into place once complete.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&std::fs::File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        let mut out = BufWriter::new(tmp.as_file());
        write(&mut out).with_context(|| format!("writing {}", path.display()))?;
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// The `line` and (when the record had one) `id` fields every output record starts with.
fn record_head(
    line: usize,
    id: Option<&serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut record = serde_json::Map::new();
    record.insert("line".into(), line.into());
    if let Some(id) = id {
        record.insert("id".into(), id.clone());
    }
    record
}

/// One record per input line, in line order: the embedding, or the reason the line was unreadable.
fn write_jsonl(out: &mut impl Write, texts: &Texts, rows: &[Vec<f32>]) -> anyhow::Result<()> {
    for entry in texts.in_line_order() {
        let record = match entry {
            Ok(i) => {
                let mut r = record_head(texts.lines[i], texts.ids[i].as_ref());
                r.insert("text".into(), texts.texts[i].clone().into());
                r.insert("embedding".into(), serde_json::json!(rows[i]));
                r
            }
            Err(j) => {
                let bad = &texts.bad[j];
                let mut r = record_head(bad.line, bad.id.as_ref());
                r.insert("error".into(), bad.reason.clone().into());
                r
            }
        };
        serde_json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// The .npy sidecar listing the NaN rows of `path`.
fn errors_sidecar(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".errors.jsonl");
    PathBuf::from(name)
}

/// One .npy row per input line; an unreadable line is a row of NaN (which no distance or mean can
/// pass off as a vector), listed with its reason in `<path>.errors.jsonl`. A stale sidecar from an
/// earlier run is removed when there is no bad line.
fn write_npy_with_errors(
    path: &Path,
    texts: &Texts,
    rows: &[Vec<f32>],
    dim: usize,
) -> anyhow::Result<()> {
    let mut flat = Vec::with_capacity(texts.records() * dim);
    let mut errors = Vec::new();
    for (row, entry) in texts.in_line_order().into_iter().enumerate() {
        match entry {
            Ok(i) => flat.extend_from_slice(&rows[i]),
            Err(j) => {
                let bad = &texts.bad[j];
                flat.extend(std::iter::repeat_n(f32::NAN, dim));
                let mut r = record_head(bad.line, bad.id.as_ref());
                r.insert("row".into(), row.into());
                r.insert("error".into(), bad.reason.clone().into());
                errors.push(r);
            }
        }
    }
    let bytes = wick::embed::npy::npy_bytes(&flat, texts.records(), dim)?;
    write_atomically(path, |out| Ok(out.write_all(&bytes)?))?;
    let sidecar = errors_sidecar(path);
    if errors.is_empty() {
        if sidecar.exists() {
            std::fs::remove_file(&sidecar)
                .with_context(|| format!("removing the stale {}", sidecar.display()))?;
        }
        return Ok(());
    }
    write_atomically(&sidecar, |out| {
        for r in &errors {
            serde_json::to_writer(&mut *out, r)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })?;
    eprintln!(
        "{} row(s) of {} are NaN (unreadable lines); lines and reasons in {}",
        errors.len(),
        path.display(),
        sidecar.display()
    );
    Ok(())
}

/// Runs `wick index`.
pub fn run_index(args: IndexArgs) -> anyhow::Result<()> {
    let options = ReadOptions {
        skip_bad_lines: args.skip_bad_lines,
    };
    let texts = read_texts_with(&args.corpus, options)?;
    let embedder = load_embedder(&args.model, &args.run)?;
    let count = texts.texts.len();
    let skipped = texts.bad.len();
    let bar = progress_bar(count, "indexing");
    let index = Index::build_from(&embedder, texts, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    index.save(&args.out)?;
    eprintln!(
        "indexed {count} texts ({} dimensions, model {}) into {}",
        index.manifest.dim,
        index.manifest.model_name,
        args.out.display()
    );
    if skipped > 0 {
        eprintln!(
            "left out {skipped} unreadable line(s), listed under `skipped_lines` in {}",
            args.out.join("manifest.json").display()
        );
    }
    Ok(())
}

/// Runs `wick search`.
pub fn run_search(args: SearchArgs) -> anyhow::Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let hits: Vec<Hit> = if let Some(dir) = &args.index {
        let index = Index::open(dir)?;
        let model = args
            .model
            .clone()
            .unwrap_or_else(|| index.manifest.model.clone());
        let embedder = load_embedder(&model, &args.run)?;
        wick::embed::search_index(&index, &embedder, &args.query, args.top_k)?
    } else {
        let corpus = args
            .corpus
            .as_ref()
            .context("--corpus or --index is required")?;
        let texts = read_texts(corpus)?;
        let model = args.model.as_deref().unwrap_or(wick::embed::DEFAULT_MODEL);
        let embedder = load_embedder(model, &args.run)?;
        let prompt = embedder.prompts().passage.clone();
        let corpus_embeddings = embed_texts(&embedder, &texts, prompt.as_deref())?;
        let query = embedder.embed_queries(&[args.query.as_str()])?;
        wick::embed::rank_by_cosine(&corpus_embeddings, &query, args.top_k)?
            .into_iter()
            .enumerate()
            .map(|(i, (row, score))| Hit {
                rank: i + 1,
                row,
                score,
                text: texts.texts[row].clone(),
                source: RowSource {
                    line: texts.lines[row],
                    id: texts.ids[row].clone(),
                },
            })
            .collect()
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for hit in hits {
        writeln!(out, "{:>3}  {:.4}  {}", hit.rank, hit.score, hit.text)?;
    }
    Ok(())
}
