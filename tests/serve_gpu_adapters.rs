//! The host side of the GPU server's adapters (CPU-only; the device side runs in `wick bench
//! gpu-check` and scripts/device/e2e.sh's `serve` step): a resident adapter (the server's layout, A
//! and B in f16) becomes exactly the engine's slot contents, and an adapter server whose GPU pool
//! holds rank R refuses a bigger one by its path.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use wick::generate::decode_adapter::{DecodeAdapter, PROJECTIONS};
use wick::lora::resident::ResidentAdapter;
use wick::lora::{Adapter, LoraConfig, TargetModules};
use wick::serve::adapters::AdapterSet;
use wick::serve::metrics::Metrics;

/// Two layers of a GQA model (hidden 64, 4 heads of 16, 2 kv heads, ffn 96), PEFT module paths.
fn shapes() -> Vec<(String, usize, usize)> {
    let dims = [
        (64, 64),
        (64, 32),
        (64, 32),
        (64, 64),
        (64, 96),
        (64, 96),
        (96, 64),
    ];
    (0..2)
        .flat_map(|l| {
            PROJECTIONS
                .iter()
                .zip(dims)
                .map(move |(p, (i, o))| (format!("model.layers.{l}.{p}"), i, o))
        })
        .collect()
}

fn adapter(rank: usize, seed: u64) -> Adapter {
    let config = LoraConfig {
        r: rank,
        lora_alpha: 2.0 * rank as f64,
        target_modules: TargetModules::parse("all-linear").unwrap(),
        ..LoraConfig::default()
    };
    let adapter = Adapter::init(config, &shapes(), seed, &Device::Cpu).unwrap();
    for (i, layer) in adapter.layers.iter().enumerate() {
        let (out, r) = layer.b.as_tensor().dims2().unwrap();
        let b =
            wick::check::random_tensor(&[out, r], DType::F32, &Device::Cpu, seed + i as u64, 0.5)
                .unwrap();
        layer.b.set(&b).unwrap();
    }
    adapter
}

fn f16_values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F16)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap()
}

#[test]
fn resident_adapter_packs_as_the_engines_load_it() {
    let a = adapter(4, 3);
    let resident = ResidentAdapter::new("a", &a, &shapes(), Path::new("mem")).unwrap();
    let request_scale = 0.5;
    let packed = DecodeAdapter::from_resident(&resident, request_scale).unwrap();
    assert_eq!(packed.layers.len(), 2);
    assert_eq!(packed.rank(), 4);
    let scale = (a.config.scale() as f32) * request_scale;
    for (l, layer) in packed.layers.iter().enumerate() {
        for (p, proj) in layer.iter().enumerate() {
            let path = format!("model.layers.{l}.{}", PROJECTIONS[p]);
            let want = a.layers.iter().find(|x| x.path == path).unwrap();
            let proj = proj
                .as_ref()
                .unwrap_or_else(|| panic!("{path} has no pair"));
            assert_eq!(proj.rank, 4, "{path}");
            assert_eq!(proj.a, f16_values(want.a.as_tensor()), "{path}: A");
            let b: Vec<f32> = f16_values(want.b.as_tensor())
                .iter()
                .map(|v| v * scale)
                .collect();
            assert_eq!(proj.b, b, "{path}: B [out, rank] times the scales");
        }
    }
}

#[test]
fn gpu_pool_rank_refuses_bigger_adapters_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let (small, big) = (dir.path().join("small"), dir.path().join("big"));
    wick::lora::peft_io::save_adapter(&adapter(4, 5), &small).unwrap();
    wick::lora::peft_io::save_adapter(&adapter(8, 6), &big).unwrap();
    let set = AdapterSet::new(
        shapes(),
        vec!["base".into()],
        4,
        Arc::new(Metrics::default()),
    );
    set.set_max_rank(4);
    set.register("small", &small, false).unwrap();
    let err = set.register("big", &big, false).unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("rank 8") && text.contains("big") && text.contains("--max-lora-rank"),
        "{text}"
    );
    assert!(
        set.get("big").unwrap().is_none(),
        "a refused adapter is not kept"
    );
}
