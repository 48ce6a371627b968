//! wick's GGUF quantizers against ggml's: the same bytes for every row of
//! tests/fixtures/llamacpp/quantize_reference.safetensors (made by scripts/llamacpp/make_quant_fixture.py
//! with ggml_quantize_chunk of llama.cpp as vendored in llama-cpp-python 0.3.36), and a written GGUF
//! that wick's reader opens and dequantizes back to the weights within each format's error.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use wick::formats::gguf::{quantize_rows, GgufFile, GgufTensorData, GgufWriter};

fn fixture() -> std::collections::HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llamacpp/quantize_reference.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).expect("reading the quantizer fixture")
}

/// The types of the fixture, with wick's largest allowed relative RMS round-trip error per row
/// (about the format's step over the row's spread; rows with outliers set the worst case, q8_0
/// measured 0.0128; every measured error is printed).
const TYPES: [(&str, GgmlDType, f32); 6] = [
    ("f16", GgmlDType::F16, 1e-3),
    ("q8_0", GgmlDType::Q8_0, 0.02),
    ("q6_k", GgmlDType::Q6K, 0.06),
    ("q5_0", GgmlDType::Q5_0, 0.12),
    ("q4_1", GgmlDType::Q4_1, 0.25),
    ("q4_k", GgmlDType::Q4K, 0.25),
];

fn input() -> (Vec<f32>, usize) {
    let input = &fixture()["input"];
    let cols = input.dims()[1];
    (input.flatten_all().unwrap().to_vec1().unwrap(), cols)
}

#[test]
fn quantized_bytes_equal_ggml_reference() {
    let f = fixture();
    let (values, cols) = input();
    for (name, dtype, _) in TYPES {
        let want = &f[name];
        let row_bytes = want.dims()[1];
        let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
        let got = quantize_rows(dtype, &values, cols).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: size");
        let bad: Vec<usize> = (0..want.len() / row_bytes)
            .filter(|r| {
                got[r * row_bytes..(r + 1) * row_bytes] != want[r * row_bytes..(r + 1) * row_bytes]
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{name}: rows {bad:?} differ from ggml's bytes"
        );
    }
}

#[test]
fn written_gguf_dequantizes_back_within_format_error() {
    let (values, cols) = input();
    let rows = values.len() / cols;
    let mut writer = GgufWriter::new();
    for (name, dtype, _) in TYPES {
        writer
            .add_tensor(GgufTensorData {
                name: format!("{name}.weight"),
                dims: vec![rows, cols],
                dtype,
                bytes: quantize_rows(dtype, &values, cols).unwrap(),
            })
            .unwrap();
    }
    let mut bytes = Vec::new();
    writer.write_to(&mut bytes).unwrap();
    let file = GgufFile::from_bytes("quantized.gguf", bytes).unwrap();
    for (name, dtype, bound) in TYPES {
        let q = file
            .qtensor(&format!("{name}.weight"), &Device::Cpu)
            .unwrap();
        assert_eq!(q.dtype(), dtype);
        let back: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut worst = 0f32;
        for (x, y) in values.chunks(cols).zip(back.chunks(cols)) {
            let spread = (x.iter().map(|v| v * v).sum::<f32>() / cols as f32).sqrt();
            let err =
                (x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / cols as f32).sqrt();
            worst = worst.max(if spread > 0.0 { err / spread } else { err });
        }
        eprintln!("{name}: worst relative RMS round-trip error over the rows {worst:.5}");
        assert!(
            worst <= bound,
            "{name}: relative RMS error {worst} above {bound}"
        );
    }
}
