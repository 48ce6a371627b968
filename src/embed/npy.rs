//! Writing a matrix as a NumPy `.npy` file (format version 1.0, little-endian f32, C order), so that
//! `numpy.load` reads embeddings without any other library.

use std::io::Write;
use std::path::Path;

use crate::error::io_error;
use crate::{Error, Result};

/// The bytes of an .npy file holding `data` as a [rows, cols] float32 matrix.
pub fn npy_bytes(data: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    if data.len() != rows * cols {
        return Err(Error::InvalidRequest(format!(
            "npy: {} values do not make a [{rows}, {cols}] matrix",
            data.len()
        )));
    }
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of 64
    // and ended by a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes `data` ([rows, cols] row-major) to `path` as .npy.
pub fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let bytes = npy_bytes(data, rows, cols)?;
    let mut file = std::fs::File::create(path).map_err(io_error(path))?;
    file.write_all(&bytes).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_data_follows() {
        let data = [1.5f32, -2.0, 0.25, 8.0, 3.0, -0.5];
        let bytes = npy_bytes(&data, 2, 3).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        let body: Vec<f32> = bytes[10 + header_len..]
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(body, data);
    }
}
