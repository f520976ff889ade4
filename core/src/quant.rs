//! ggml's block quantization formats (what GGUF files store): Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1,
//! 32 values a block with an f16 scale (and an f16 minimum for the `_1` kinds). Quantizing and
//! dequantizing reproduce the `gguf` Python package (0.19, `gguf.quants`) bit for bit: the same
//! float32 operations in the same order (no fused multiply-add), f16 conversion rounding to
//! nearest even, ties of Q8_0's rounding away from zero. gguf 0.19's Q4_0 computes in float32
//! where ggml's C code now uses float64 for `1/d`, so a rare value may differ by one step from
//! a file quantized in C; files from either dequantize identically.

use half::f16;

use crate::{Error, Result};

/// Values per block in every format here.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl QuantType {
    pub const ALL: [QuantType; 5] = [Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q5_1, Self::Q8_0];

    /// ggml's `ggml_type` number (GGUF tensor infos carry it).
    pub fn ggml_type(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
        }
    }

    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_type() == id)
    }

    /// Bytes per block of [`BLOCK`] values.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::argument(
                    "quantization",
                    format!("{name}: known types are q8_0, q5_1, q5_0, q4_1, q4_0"),
                )
            })
    }

    /// Bytes that `values` values take.
    pub fn bytes_for(self, values: usize) -> usize {
        values / BLOCK * self.block_bytes()
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// numpy's `np_roundf` in gguf: |n| rounded half away from zero, in float32.
fn roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    if n > 0.0 {
        b
    } else if n < 0.0 {
        -b
    } else {
        0.0
    }
}

/// `1 / d`, or 0 for an all-zero block.
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// The value of largest magnitude, sign kept (the first one on ties, as numpy's `argmax`).
fn signed_max(block: &[f32]) -> f32 {
    let mut best = block[0];
    for &v in &block[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

fn min_max(block: &[f32]) -> (f32, f32) {
    block
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Low nibbles from the first 16 values, high nibbles from the last 16 (of 4 low bits each).
fn pack_nibbles(q: &[u8; BLOCK], out: &mut Vec<u8>) {
    for j in 0..BLOCK / 2 {
        out.push((q[j] & 0x0F) | (q[j + BLOCK / 2] << 4));
    }
}

/// Bit `i` of the little-endian u32: bit 4 of value `i`.
fn fifth_bits(q: &[u8; BLOCK]) -> [u8; 4] {
    let mut bits = 0u32;
    for (i, &v) in q.iter().enumerate() {
        bits |= u32::from((v >> 4) & 1) << i;
    }
    bits.to_le_bytes()
}

/// The 4-bit (or, with `high`, 5-bit) codes of a block's packed values.
fn unpack(qs: &[u8], high: Option<&[u8]>) -> [u8; BLOCK] {
    let bits = high.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    let mut q = [0u8; BLOCK];
    for j in 0..BLOCK / 2 {
        q[j] = qs[j] & 0x0F;
        q[j + BLOCK / 2] = qs[j] >> 4;
    }
    if high.is_some() {
        for (i, v) in q.iter_mut().enumerate() {
            *v |= (((bits >> i) & 1) as u8) << 4;
        }
    }
    q
}

/// Symmetric 4/5-bit codes: `trunc(x / d + offset + 0.5)` clipped, with `d = max / -offset`.
fn symmetric_codes(block: &[f32], offset: f32, top: u8) -> (f32, [u8; BLOCK]) {
    let d = signed_max(block) / -offset;
    let id = inverse(d);
    let mut q = [0u8; BLOCK];
    for (qi, &x) in q.iter_mut().zip(block) {
        // numpy: astype(uint8) then clip; the value is never negative here.
        *qi = ((x * id + (offset + 0.5)).trunc() as u8).min(top);
    }
    (d, q)
}

/// Codes from the minimum: `trunc((x - min) / d + 0.5)` clipped, with `d = (max - min) / top`.
fn offset_codes(block: &[f32], top: u8) -> (f32, f32, [u8; BLOCK]) {
    let (lo, hi) = min_max(block);
    let d = (hi - lo) / f32::from(top);
    let id = inverse(d);
    let mut q = [0u8; BLOCK];
    for (qi, &x) in q.iter_mut().zip(block) {
        *qi = (((x - lo) * id + 0.5).trunc() as u8).min(top);
    }
    (d, lo, q)
}

/// Quantizes `values` (a multiple of [`BLOCK`] long, all finite); `what` names them in errors.
pub fn quantize(what: &str, values: &[f32], kind: QuantType) -> Result<Vec<u8>> {
    if !values.len().is_multiple_of(BLOCK) {
        return Err(Error::argument(
            what,
            format!(
                "{} values do not fill whole {} blocks of {BLOCK}",
                values.len(),
                kind.name()
            ),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::argument(
            what,
            format!("value {i} is {}: only finite values quantize", values[i]),
        ));
    }
    let mut out = Vec::with_capacity(kind.bytes_for(values.len()));
    for block in values.chunks_exact(BLOCK) {
        match kind {
            QuantType::Q8_0 => {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = inverse(d);
                out.extend(f16_bytes(d));
                out.extend(block.iter().map(|&x| roundf(x * id) as i8 as u8));
            }
            QuantType::Q4_0 => {
                let (d, q) = symmetric_codes(block, 8.0, 15);
                out.extend(f16_bytes(d));
                pack_nibbles(&q, &mut out);
            }
            QuantType::Q5_0 => {
                let (d, q) = symmetric_codes(block, 16.0, 31);
                out.extend(f16_bytes(d));
                out.extend(fifth_bits(&q));
                pack_nibbles(&q, &mut out);
            }
            QuantType::Q4_1 => {
                let (d, lo, q) = offset_codes(block, 15);
                out.extend(f16_bytes(d));
                out.extend(f16_bytes(lo));
                pack_nibbles(&q, &mut out);
            }
            QuantType::Q5_1 => {
                let (d, lo, q) = offset_codes(block, 31);
                out.extend(f16_bytes(d));
                out.extend(f16_bytes(lo));
                out.extend(fifth_bits(&q));
                pack_nibbles(&q, &mut out);
            }
        }
    }
    Ok(out)
}

/// The block size of `kind`, once `bytes` are checked to be whole blocks of it.
fn whole_blocks(what: &str, bytes: &[u8], kind: QuantType) -> Result<usize> {
    let size = kind.block_bytes();
    if !bytes.len().is_multiple_of(size) {
        return Err(Error::argument(
            what,
            format!(
                "{} bytes are not whole {} blocks of {size} bytes",
                bytes.len(),
                kind.name()
            ),
        ));
    }
    Ok(size)
}

/// Dequantizes whole blocks; `what` names the data in errors.
pub fn dequantize(what: &str, bytes: &[u8], kind: QuantType) -> Result<Vec<f32>> {
    let size = whole_blocks(what, bytes, kind)?;
    let mut out = Vec::with_capacity(bytes.len() / size * BLOCK);
    for b in bytes.chunks_exact(size) {
        let d = f16_at(b, 0);
        match kind {
            QuantType::Q8_0 => out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d)),
            QuantType::Q4_0 => {
                let q = unpack(&b[2..], None);
                out.extend(q.iter().map(|&v| d * f32::from(v as i8 - 8)));
            }
            QuantType::Q5_0 => {
                let q = unpack(&b[6..], Some(&b[2..6]));
                out.extend(q.iter().map(|&v| d * f32::from(v as i8 - 16)));
            }
            QuantType::Q4_1 => {
                let m = f16_at(b, 2);
                let q = unpack(&b[4..], None);
                out.extend(q.iter().map(|&v| d * f32::from(v) + m));
            }
            QuantType::Q5_1 => {
                let m = f16_at(b, 2);
                let q = unpack(&b[8..], Some(&b[4..8]));
                out.extend(q.iter().map(|&v| d * f32::from(v) + m));
            }
        }
    }
    Ok(out)
}

/// Blocks repacked for a device: each block's codes as little-endian i32 words (`words_per_block`
/// of them: Q8_0 8, Q4_0/Q4_1 4, Q5_0/Q5_1 5 with the fifth bits first) and its scales widened
/// to f32 (`d`, then `m` for the `_1` formats). The same bytes as the file, less the padding of
/// nothing: [`crate::models::packed::unpack`] turns them back into values in the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedBlocks {
    pub words: Vec<i32>,
    pub words_per_block: usize,
    pub scales: Vec<f32>,
    pub scales_per_block: usize,
}

/// Repacks `bytes` (whole blocks of `kind`) for the device; see [`PackedBlocks`].
pub fn pack(what: &str, bytes: &[u8], kind: QuantType) -> Result<PackedBlocks> {
    let size = whole_blocks(what, bytes, kind)?;
    let scales_per_block = match kind {
        QuantType::Q4_1 | QuantType::Q5_1 => 2,
        _ => 1,
    };
    let words_per_block = (size - 2 * scales_per_block) / 4;
    let blocks = bytes.len() / size;
    let mut words = Vec::with_capacity(blocks * words_per_block);
    let mut scales = Vec::with_capacity(blocks * scales_per_block);
    for b in bytes.chunks_exact(size) {
        scales.extend((0..scales_per_block).map(|i| f16_at(b, 2 * i)));
        words.extend(
            b[2 * scales_per_block..]
                .chunks_exact(4)
                .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        );
    }
    Ok(PackedBlocks {
        words,
        words_per_block,
        scales,
        scales_per_block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stay_within_half_a_step() {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for kind in QuantType::ALL {
            let bytes = quantize("x", &values, kind).unwrap();
            assert_eq!(bytes.len(), kind.bytes_for(values.len()));
            let back = dequantize("x", &bytes, kind).unwrap();
            let levels = match kind {
                QuantType::Q8_0 => 127.0,
                QuantType::Q4_0 | QuantType::Q4_1 => 7.5,
                QuantType::Q5_0 | QuantType::Q5_1 => 15.5,
            };
            for (block, got) in values.chunks(BLOCK).zip(back.chunks(BLOCK)) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let step = 2.0 * amax / levels;
                for (a, b) in block.iter().zip(got) {
                    assert!((a - b).abs() <= step, "{kind:?}: {a} -> {b} (step {step})");
                }
            }
        }
    }

    #[test]
    fn bad_lengths_and_values_are_named() {
        let e = quantize("w", &[0.0; 33], QuantType::Q8_0).unwrap_err();
        assert!(
            e.to_string()
                .contains("33 values do not fill whole q8_0 blocks"),
            "{e}"
        );
        let mut v = [0.0f32; 32];
        v[3] = f32::NAN;
        let e = quantize("w", &v, QuantType::Q4_0).unwrap_err();
        assert!(e.to_string().contains("value 3 is NaN"), "{e}");
        let e = dequantize("w", &[0; 17], QuantType::Q4_0).unwrap_err();
        assert!(
            e.to_string()
                .contains("17 bytes are not whole q4_0 blocks of 18"),
            "{e}"
        );
        assert!(QuantType::parse("q3_k").is_err());
        assert_eq!(QuantType::from_ggml_type(8), Some(QuantType::Q8_0));
    }
}
