//! Initial noise: a seeded host-side Gaussian generator (identical on every device and
//! platform), and noise tensors read from `.npy` or safetensors files.

use crate::{Error, Result, weights};

/// A unit-Gaussian noise tensor on the host, with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Noise {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

/// xoshiro256++ seeded through SplitMix64, with Box-Muller for Gaussians: small, portable and
/// the same stream everywhere (the browser included), so a seed means one image per model.
#[derive(Debug, Clone)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let out = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// `n` standard normal samples.
    pub fn gaussian(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let theta = std::f64::consts::TAU * self.uniform();
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

impl Noise {
    pub fn from_seed(seed: u64, shape: &[usize]) -> Self {
        let n = shape.iter().product();
        Self {
            values: Rng::new(seed).gaussian(n),
            shape: shape.to_vec(),
        }
    }

    /// Reads `.npy` (NumPy's format: f32, f64 or f16, C order) or safetensors (one float
    /// tensor, or the one named `noise` or `latents`); `file` names it in errors.
    pub fn from_bytes(file: &str, bytes: &[u8]) -> Result<Self> {
        let noise = if bytes.starts_with(b"\x93NUMPY") {
            read_npy(file, bytes)?
        } else {
            read_safetensors(file, bytes)?
        };
        if let Some(i) = noise.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::argument(
                file,
                format!(
                    "noise value {i} is {} (noise must be finite)",
                    noise.values[i]
                ),
            ));
        }
        Ok(noise)
    }
}

impl Noise {
    /// NumPy `.npy` (format 1.0, little-endian f32, C order): what `np.load` and `--noise` read.
    pub fn to_npy(&self) -> Vec<u8> {
        let dims: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        // Magic (6) + version (2) + length (2) + header, padded with spaces to 64 bytes, '\n'.
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        for v in &self.values {
            out.extend(v.to_le_bytes());
        }
        out
    }
}

fn read_npy(file: &str, bytes: &[u8]) -> Result<Noise> {
    let bad = |reason: String| Error::argument(file, format!("not a readable .npy file: {reason}"));
    let version = *bytes.get(6).ok_or_else(|| bad("truncated".into()))?;
    let (len_bytes, start) = match version {
        1 => (2, 8),
        2 | 3 => (4, 8),
        v => return Err(bad(format!("format version {v}"))),
    };
    let header_len = bytes
        .get(start..start + len_bytes)
        .ok_or_else(|| bad("truncated".into()))?
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let data_start = start + len_bytes + header_len;
    let header = bytes
        .get(start + len_bytes..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad("no dtype".into()))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad("Fortran order; save it in C order".into()));
    }
    let shape: Vec<usize> = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("no shape".into()))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| bad(format!("shape: {e}"))))
        .collect::<Result<_>>()?;
    // Checked: a hostile shape's product can overflow (and wrap to the data's length).
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(format!(
                "shape {shape:?} has more elements than memory can hold"
            ))
        })?;
    let data = &bytes[data_start.min(bytes.len())..];
    let values: Vec<f32> = match descr {
        "<f4" => decode(data, n, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "<f8" => decode(data, n, 8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "<f2" => decode(data, n, 2, |b| {
            half::f16::from_le_bytes([b[0], b[1]]).to_f32()
        }),
        other => return Err(bad(format!("dtype {other}; expected <f4, <f8 or <f2"))),
    }
    .ok_or_else(|| {
        bad(format!(
            "{} data bytes for shape {shape:?} of {descr}",
            data.len()
        ))
    })?;
    Ok(Noise { values, shape })
}

fn decode(data: &[u8], n: usize, width: usize, f: impl Fn(&[u8]) -> f32) -> Option<Vec<f32>> {
    (n.checked_mul(width) == Some(data.len())).then(|| data.chunks_exact(width).map(f).collect())
}

fn read_safetensors(file: &str, bytes: &[u8]) -> Result<Noise> {
    let header = weights::inspect(file, bytes)?;
    let name = match header.len() {
        1 => header.keys().next().cloned(),
        _ => ["noise", "latents"]
            .into_iter()
            .find(|n| header.contains_key(*n))
            .map(String::from),
    }
    .ok_or_else(|| {
        Error::argument(
            file,
            format!(
                "{} tensors and none named `noise` or `latents`",
                header.len()
            ),
        )
    })?;
    let shape = header[&name].shape.clone();
    let values = weights::read_f32(file, bytes, &name)?;
    Ok(Noise { values, shape })
}
