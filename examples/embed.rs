//! Embed a corpus (one text a line) and search it with a query, by cosine similarity.
//!
//! ```text
//! cargo run --release --example embed -- CORPUS.txt "QUERY" [MODEL] [TOP_K]
//! ```
//! MODEL is a sentence-transformers directory; without one, all-MiniLM-L6-v2 is fetched into the
//! cache on first use.

use wick::embed::corpus::read_texts;
use wick::embed::DEFAULT_MODEL;
use wick::{search_index, Device, Embedder, Index};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(corpus), Some(query)) = (args.first(), args.get(1)) else {
        return Err("usage: embed CORPUS.txt QUERY [MODEL] [TOP_K]".into());
    };
    let model = args.get(2).map_or(DEFAULT_MODEL, String::as_str);
    let top_k: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;

    let embedder = Embedder::load(model, &Device::Cpu)?;
    let texts = read_texts(std::path::Path::new(corpus))?;
    let index = Index::build(&embedder, texts.texts, &mut |done| {
        eprint!("\rembedded {done}");
    })?;
    eprintln!();
    // `index.save(dir)` writes it for later (`Index::open`); here it is searched at once.
    for hit in search_index(&index, &embedder, query, top_k)? {
        println!("{:>2}. {:.4}  {}", hit.rank, hit.score, hit.text);
    }
    Ok(())
}
