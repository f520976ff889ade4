//! The preference store: one person's pairwise choices ("I prefer this one"), as a versioned
//! JSON document that stays on their device.
//!
//! ```json
//! {
//!   "format": "tastebud-preferences",
//!   "version": 1,
//!   "embedding_model": "openai/clip-vit-large-patch14",
//!   "records": [{
//!     "prompt": "a cat in a hat",
//!     "a": {"image": "cat-1.png", "embedding": [0.01, ...]},
//!     "b": {"image": "cat-2.png"},
//!     "choice": "a",
//!     "model": "stabilityai/sd-turbo",
//!     "timestamp": 1795000000,
//!     "user": "alice",
//!     "prompt_embedding": [0.02, ...]
//!   }]
//! }
//! ```
//!
//! A candidate names its image (a path or URL, as the front end keeps it), carries its unit
//! image embedding, or both; `choice` is `a`, `b` or `tie`; `timestamp` is Unix seconds;
//! `model` (what made the images), `user` (only population files for pretraining have several)
//! and `prompt_embedding` (the prompt's unit text embedding, for heads that read the prompt)
//! are optional. Every embedding in a store has the store's one dimension. Unknown fields, a
//! newer version, non-finite numbers and anything over [`Limits`] are refused with the record
//! and field named; a failed import leaves the store as it was.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub const FORMAT: &str = "tastebud-preferences";
pub const VERSION: u32 = 1;

/// Sizes past which a preference file is refused (a hostile or corrupt file must not exhaust
/// memory).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_records: usize,
    pub max_dimension: usize,
    pub max_text: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_records: 200_000,
            max_dimension: 8192,
            max_text: 4096,
        }
    }
}

/// Which candidate the person preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    A,
    B,
    Tie,
}

impl Choice {
    /// The Bradley-Terry target: P(a preferred over b).
    pub fn target(self) -> f32 {
        match self {
            Self::A => 1.0,
            Self::B => 0.0,
            Self::Tie => 0.5,
        }
    }

    fn flipped(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
            Self::Tie => Self::Tie,
        }
    }
}

/// One of the two images shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// One answered pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    pub prompt: String,
    pub a: Candidate,
    pub b: Candidate,
    pub choice: Choice,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_embedding: Option<Vec<f32>>,
}

impl Preference {
    /// The pair regardless of order (user, prompt and the two images, by name else by
    /// embedding bits) and the choice seen in that order.
    fn ordered(&self) -> ((String, String, String), Choice) {
        let id = |c: &Candidate| match (&c.image, &c.embedding) {
            (Some(name), _) => format!("image:{name}"),
            (None, Some(e)) => e.iter().map(|v| format!("{:08x}", v.to_bits())).collect(),
            (None, None) => String::new(),
        };
        let (a, b) = (id(&self.a), id(&self.b));
        let context = format!("{}\n{}", self.user.as_deref().unwrap_or(""), self.prompt);
        if a <= b {
            ((context, a, b), self.choice)
        } else {
            ((context, b, a), self.choice.flipped())
        }
    }
}

/// A person's (or, for pretraining, a population's) preferences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceStore {
    pub format: String,
    pub version: u32,
    /// What the embeddings come from (e.g. a CLIP's hub id); heads are tied to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    pub records: Vec<Preference>,
}

impl Default for PreferenceStore {
    fn default() -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            embedding_model: None,
            records: vec![],
        }
    }
}

/// What [`PreferenceStore::summary`] finds: counts a front end shows before fitting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreSummary {
    pub records: usize,
    pub ties: usize,
    pub users: usize,
    /// Records whose both candidates carry an embedding (what a head can learn from).
    pub with_embeddings: usize,
    pub dimension: Option<usize>,
    /// Pairs answered both ways (same prompt and images, opposite choices).
    pub contradictions: usize,
}

impl PreferenceStore {
    pub fn new(embedding_model: Option<String>) -> Self {
        Self {
            embedding_model,
            ..Self::default()
        }
    }

    /// Parses and validates a preference file named `file`.
    pub fn from_json(file: &str, bytes: &[u8], limits: &Limits) -> Result<Self> {
        let bad = |reason: String| Error::BadJson {
            file: file.to_string(),
            reason,
        };
        if bytes.len() > limits.max_bytes {
            return Err(bad(format!(
                "{} bytes, over the {} byte limit for a preference file",
                bytes.len(),
                limits.max_bytes
            )));
        }
        // The version is read first, so a newer file says so instead of failing on a field.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a preference file: {e}")))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(bad(format!(
                "`format` is {:?}, expected \"{FORMAT}\"",
                header.format
            )));
        }
        match header.version {
            Some(VERSION) => {}
            Some(v) if v > VERSION => {
                return Err(bad(format!(
                    "version {v} was written by a newer Tastebud (this one reads {VERSION})"
                )));
            }
            v => return Err(bad(format!("unsupported version {v:?}"))),
        }
        let store: Self = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        store.validate(limits).map_err(bad)?;
        Ok(store)
    }

    /// The store as pretty JSON (what export writes).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|e| Error::BadJson {
            file: "preferences".into(),
            reason: e.to_string(),
        })
    }

    /// The one embedding dimension of the store, if any record carries an embedding.
    pub fn dimension(&self) -> Option<usize> {
        self.records
            .iter()
            .flat_map(|r| [&r.a.embedding, &r.b.embedding])
            .flatten()
            .map(Vec::len)
            .next()
    }

    fn validate(&self, limits: &Limits) -> std::result::Result<(), String> {
        if self.records.len() > limits.max_records {
            return Err(format!(
                "{} records, over the limit of {}",
                self.records.len(),
                limits.max_records
            ));
        }
        let dimension = self.dimension();
        if let Some(d) = dimension
            && (d == 0 || d > limits.max_dimension)
        {
            return Err(format!(
                "embeddings of dimension {d}; at most {} allowed",
                limits.max_dimension
            ));
        }
        for (i, r) in self.records.iter().enumerate() {
            let at = |field: &str, reason: String| format!("records[{i}].{field}: {reason}");
            for (field, text) in [
                ("prompt", Some(&r.prompt)),
                ("model", r.model.as_ref()),
                ("user", r.user.as_ref()),
                ("a.image", r.a.image.as_ref()),
                ("b.image", r.b.image.as_ref()),
            ] {
                if let Some(t) = text
                    && t.len() > limits.max_text
                {
                    return Err(at(
                        field,
                        format!("{} bytes, over {}", t.len(), limits.max_text),
                    ));
                }
            }
            for (field, c) in [("a", &r.a), ("b", &r.b)] {
                if c.image.is_none() && c.embedding.is_none() {
                    return Err(at(field, "needs an `image` or an `embedding`".into()));
                }
            }
            let vectors = [
                ("a.embedding", &r.a.embedding),
                ("b.embedding", &r.b.embedding),
                ("prompt_embedding", &r.prompt_embedding),
            ];
            for (field, v) in vectors {
                let Some(v) = v else { continue };
                if Some(v.len()) != dimension {
                    return Err(at(
                        field,
                        format!(
                            "dimension {}, but the store's embeddings have {}",
                            v.len(),
                            dimension.unwrap_or(0)
                        ),
                    ));
                }
                if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                    return Err(at(field, format!("value {j} is not finite")));
                }
            }
        }
        Ok(())
    }

    /// Adds a record after checking it against the store (dimension, finiteness, limits).
    pub fn push(&mut self, record: Preference) -> Result<()> {
        let mut next = self.clone();
        next.records.push(record);
        next.validate(&Limits::default())
            .map_err(|reason| Error::argument("preference", reason))?;
        *self = next;
        Ok(())
    }

    /// Merges another store's records in (skipping records already present). The other store
    /// must use the same embedding model and dimension; on any error nothing changes.
    pub fn import(&mut self, other: PreferenceStore) -> Result<usize> {
        if let (Some(a), Some(b)) = (&self.embedding_model, &other.embedding_model)
            && a != b
        {
            return Err(Error::argument(
                "import",
                format!("its embeddings come from `{b}`, this store's from `{a}`"),
            ));
        }
        if let (Some(a), Some(b)) = (self.dimension(), other.dimension())
            && a != b
        {
            return Err(Error::argument(
                "import",
                format!("its embeddings have dimension {b}, this store's {a}"),
            ));
        }
        let mut next = self.clone();
        if next.embedding_model.is_none() {
            next.embedding_model = other.embedding_model.clone();
        }
        let mut added = 0;
        for record in other.records {
            if !next.records.contains(&record) {
                next.records.push(record);
                added += 1;
            }
        }
        next.validate(&Limits::default())
            .map_err(|reason| Error::argument("import", reason))?;
        *self = next;
        Ok(added)
    }

    pub fn summary(&self) -> StoreSummary {
        let mut answers: std::collections::HashMap<_, HashSet<Choice>> = Default::default();
        for r in &self.records {
            let (pair, choice) = r.ordered();
            answers.entry(pair).or_default().insert(choice);
        }
        let contradictions = answers
            .values()
            .filter(|c| c.contains(&Choice::A) && c.contains(&Choice::B))
            .count();
        let users: HashSet<Option<&String>> =
            self.records.iter().map(|r| r.user.as_ref()).collect();
        StoreSummary {
            records: self.records.len(),
            ties: self
                .records
                .iter()
                .filter(|r| r.choice == Choice::Tie)
                .count(),
            users: users.len(),
            with_embeddings: self
                .records
                .iter()
                .filter(|r| r.a.embedding.is_some() && r.b.embedding.is_some())
                .count(),
            dimension: self.dimension(),
            contradictions,
        }
    }
}
