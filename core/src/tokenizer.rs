//! The CLIP BPE tokenizer, through the `tokenizers` crate, from either `tokenizer.json` or the
//! `vocab.json` + `merges.txt` pair that SD 1.x/2.x snapshots ship. For the pair we build the
//! same tokenizer.json that transformers' CLIP converter builds, so both paths give HF's ids.

use serde::Deserialize;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::files::ModelFiles;
use crate::{Error, Result};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// transformers writes this sentinel for "no limit".
/// The longest token sequence a tokenizer config may ask for (CLIP's text towers take 77).
pub const MAX_TOKENS: usize = 4096;

const NO_LIMIT: f64 = 1e29;

/// A tokenized prompt, padded to the model's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    /// Index of the end-of-text token (where CLIP pools).
    pub eos_index: usize,
    /// True when the prompt was cut to fit.
    pub truncated: bool,
}

/// CLIP's tokenizer with its padding and length settings.
pub struct ClipTokenizer {
    inner: Tokenizer,
    pub max_length: usize,
    pub pad_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
    pad_token: Option<TokenSpec>,
}

#[derive(Deserialize, Default)]
struct SpecialTokensMap {
    pad_token: Option<TokenSpec>,
}

/// transformers writes special tokens either as a string or as an AddedToken object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            Self::Plain(s) | Self::Added { content: s } => s,
        }
    }
}

impl ClipTokenizer {
    /// Loads from a tokenizer folder (`tokenizer.json`, or `vocab.json` + `merges.txt`, plus the
    /// optional `tokenizer_config.json` and `special_tokens_map.json`). `files` are the folder's.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let config: TokenizerConfig = files.json_opt("tokenizer_config.json")?.unwrap_or_default();
        let special: SpecialTokensMap = files
            .json_opt("special_tokens_map.json")?
            .unwrap_or_default();
        let pad = special
            .pad_token
            .as_ref()
            .or(config.pad_token.as_ref())
            .map(TokenSpec::content);
        let pad = pad.unwrap_or(EOS).to_string();
        let (inner, source) = if let Some(json) = files.get("tokenizer.json") {
            check_tokenizer_json(json).map_err(|e| tok_error(files, "tokenizer.json", e))?;
            let tok =
                Tokenizer::from_bytes(json).map_err(|e| tok_error(files, "tokenizer.json", e))?;
            (tok, "tokenizer.json")
        } else {
            let vocab = files.get("vocab.json").ok_or_else(|| Error::MissingFile {
                folder: files.origin.clone(),
                wanted: "tokenizer.json or vocab.json + merges.txt".into(),
            })?;
            let merges = files.get("merges.txt").ok_or_else(|| Error::MissingFile {
                folder: files.origin.clone(),
                wanted: "merges.txt (beside vocab.json)".into(),
            })?;
            let json = clip_tokenizer_json(files, vocab, merges, &pad)?;
            let tok = Tokenizer::from_bytes(json.to_string().as_bytes())
                .map_err(|e| tok_error(files, "vocab.json", e))?;
            (tok, "vocab.json")
        };
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| Error::Tokenizer {
                file: files.label(source),
                reason: format!("the vocabulary has no `{token}`"),
            })
        };
        let pad_id = id(&pad)?;
        let max_length = match config.model_max_length {
            Some(n) if n >= 1.0 && n <= MAX_TOKENS as f64 => n as usize,
            // transformers' "no limit" and a missing value: CLIP's 77.
            Some(n) if n >= NO_LIMIT || n.is_nan() => 77,
            None => 77,
            Some(n) => {
                return Err(Error::Tokenizer {
                    file: files.label("tokenizer_config.json"),
                    reason: format!("model_max_length {n} is outside 1..={MAX_TOKENS}"),
                });
            }
        };
        let (bos_id, eos_id) = (id(BOS)?, id(EOS)?);
        let mut inner = inner;
        // Truncation and padding are applied below, where the policy is ours.
        inner
            .with_truncation(None)
            .map_err(|e| tok_error(files, source, e))?
            .with_padding(None);
        Ok(Self {
            inner,
            max_length,
            pad_id,
            bos_id,
            eos_id,
        })
    }

    /// Token ids with start/end tokens, without padding or truncation.
    pub fn encode_unpadded(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| Error::BadPrompt(format!("tokenizer failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Tokenizes `prompt` to exactly `max_length` ids. A prompt longer than that is an error
    /// unless `truncate` is set, in which case it is cut as transformers does (keeping the end
    /// token).
    pub fn encode(&self, prompt: &str, truncate: bool) -> Result<TokenizedPrompt> {
        let mut ids = self.encode_unpadded(prompt)?;
        if ids.is_empty() {
            return Err(Error::BadPrompt(
                "the tokenizer gave no tokens, not even start and end tokens (its \
                 tokenizer.json has no post-processor)"
                    .into(),
            ));
        }
        let truncated = ids.len() > self.max_length;
        if truncated {
            if !truncate {
                return Err(Error::BadPrompt(format!(
                    "{} tokens long; the text encoder takes at most {} including start and end \
                     tokens (shorten it, or allow truncation)",
                    ids.len(),
                    self.max_length
                )));
            }
            ids.truncate(self.max_length - 1);
            ids.push(self.eos_id);
        }
        let eos_index = ids.len() - 1;
        ids.resize(self.max_length, self.pad_id);
        Ok(TokenizedPrompt {
            ids,
            eos_index,
            truncated,
        })
    }
}

/// What `tokenizers` 0.22 would panic on instead of failing (found by fuzzing, each kept in
/// tests/fuzz/findings/tokenizer_json): a `decoder` whose text is not valid JSON (a syntax
/// error, a byte that is not UTF-8 inside a string: it `expect`s while reading it), and a
/// `Precompiled` normalizer that does not deserialize (it `expect`s there too). Parsing the
/// whole file as a `Value` checks the text exactly as its decoder reader does; `Precompiled`
/// (SentencePiece's normalizer) belongs to no tokenizer Tastebud's models use, so it is refused.
fn check_tokenizer_json(json: &[u8]) -> std::result::Result<(), String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    fn has_precompiled(v: &Value) -> bool {
        match v {
            Value::Object(map) => {
                map.get("type").and_then(Value::as_str) == Some("Precompiled")
                    || map.values().any(has_precompiled)
            }
            Value::Array(items) => items.iter().any(has_precompiled),
            _ => false,
        }
    }
    match value.get("normalizer") {
        Some(n) if has_precompiled(n) => Err("its normalizer is SentencePiece's `Precompiled`, \
             which no tokenizer of Tastebud's models uses (CLIP's byte-level BPE is expected)"
            .into()),
        _ => Ok(()),
    }
}

fn tok_error(files: &ModelFiles, name: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        file: files.label(name),
        reason: e.to_string(),
    }
}

/// The tokenizer that transformers 5's `CLIPTokenizer` builds from vocab.json + merges.txt.
///
/// transformers registers a pad token other than `<|endoftext|>` (SD 2.x's `!`) as an added
/// special token, so a literal `!` in a prompt becomes the pad id: we do the same.
fn clip_tokenizer_json(
    files: &ModelFiles,
    vocab: &[u8],
    merges: &[u8],
    pad: &str,
) -> Result<Value> {
    let vocab: Value = serde_json::from_slice(vocab).map_err(|e| Error::BadJson {
        file: files.label("vocab.json"),
        reason: e.to_string(),
    })?;
    let merges = std::str::from_utf8(merges).map_err(|e| tok_error(files, "merges.txt", e))?;
    let merges: Vec<&str> = merges
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .collect();
    let id_of = |token: &str| {
        vocab
            .get(token)
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Tokenizer {
                file: files.label("vocab.json"),
                reason: format!("the vocabulary has no `{token}`"),
            })
    };
    let (bos_id, eos_id) = (id_of(BOS)?, id_of(EOS)?);
    let added = |id: u64, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let mut added_tokens = vec![added(bos_id, BOS), added(eos_id, EOS)];
    if pad != BOS && pad != EOS {
        added_tokens.push(added(id_of(pad)?, pad));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [EOS, eos_id], "cls": [BOS, bos_id],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": EOS, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}
