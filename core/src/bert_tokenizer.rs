//! BERT's WordPiece tokenizer (`bert-base-uncased`) as BLIP and ImageReward use it: built from
//! `vocab.txt` into the same `tokenizers` pipeline transformers' `BertTokenizerFast` converts
//! to (clean text, CJK spacing, lowercase, strip accents, split on whitespace and punctuation,
//! greedy longest-match WordPiece), plus BLIP's two added tokens `[DEC]` and `[ENC]`.

use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

use crate::files::ModelFiles;
use crate::{Error, Result};

pub const VOCAB_FILE: &str = "vocab.txt";
const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// What `BLIP.init_tokenizer` adds after the vocabulary: `bos_token` and one additional token.
const BLIP_ADDED: [&str; 2] = ["[DEC]", "[ENC]"];

/// `BertTokenizer` with BLIP's added tokens.
pub struct BertTokenizer {
    inner: Tokenizer,
    /// Ids the tokenizer can produce: vocabulary plus added tokens.
    pub vocab_size: usize,
}

impl BertTokenizer {
    /// From a folder's `vocab.txt` (one token per line, ids by line, as `BertTokenizer` reads
    /// it).
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let file = files.label(VOCAB_FILE);
        let bytes = files.get(VOCAB_FILE).ok_or_else(|| Error::MissingFile {
            folder: files.origin.clone(),
            wanted: format!("{VOCAB_FILE} (bert-base-uncased's WordPiece vocabulary)"),
        })?;
        let bad = |reason: String| Error::Tokenizer {
            file: file.clone(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.last() == Some(&"") {
            lines.pop();
        }
        // A later duplicate wins, as in transformers' `load_vocab`.
        let mut vocab = Map::new();
        for (id, token) in lines.iter().enumerate() {
            vocab.insert(token.to_string(), json!(id));
        }
        let id_of = |token: &str| {
            vocab
                .get(token)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("the vocabulary has no `{token}`")))
        };
        let special_ids = SPECIAL
            .iter()
            .map(|t| id_of(t))
            .collect::<Result<Vec<_>>>()?;
        let (cls, sep) = (special_ids[2], special_ids[3]);
        let added = |id: u64, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        };
        let mut added_tokens: Vec<Value> = SPECIAL
            .iter()
            .zip(&special_ids)
            .map(|(t, &id)| added(id, t))
            .collect();
        for (i, t) in BLIP_ADDED.iter().enumerate() {
            added_tokens.push(added((lines.len() + i) as u64, t));
        }
        let single = json!([
            {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 0}}
        ]);
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing", "single": single, "pair": single,
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}}},
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        });
        let inner =
            Tokenizer::from_bytes(spec.to_string().as_bytes()).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner,
            vocab_size: lines.len() + BLIP_ADDED.len(),
        })
    }

    /// `[CLS] tokens [SEP]`, unpadded. Longer than `max_length` is an error unless `truncate`,
    /// which cuts as transformers does (`truncation=True`: the end token kept).
    pub fn encode(&self, prompt: &str, max_length: usize, truncate: bool) -> Result<Vec<u32>> {
        if prompt.trim().is_empty() {
            return Err(Error::BadPrompt("the prompt is empty".into()));
        }
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| Error::BadPrompt(format!("tokenizer failed: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > max_length {
            if !truncate {
                return Err(Error::BadPrompt(format!(
                    "{} tokens long; this model reads at most {max_length} including start and \
                     end tokens (shorten it, or allow truncation)",
                    ids.len()
                )));
            }
            let end = ids[ids.len() - 1];
            ids.truncate(max_length - 1);
            ids.push(end);
        }
        Ok(ids)
    }
}
