//! Model files over the network, done once for the page, the package and the tests: streamed
//! with progress, checked against a manifest (size and SubtleCrypto sha256) before use, kept in
//! the Cache API so a second or offline visit loads from there. A cached copy that no longer
//! matches is thrown away and fetched again; a download that does not match is never cached and
//! its error names the file. Works in a page and in a worker (everything is reached through the
//! global object).

use js_sys::{Function, Object, Reflect, Uint8Array};
use tastebud_core::manifest::{Manifest, ManifestFile};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, CacheStorage, ReadableStreamDefaultReader, Response, SubtleCrypto};

/// The Cache API store every model file goes into (one per format of the keys below).
const CACHE_NAME: &str = "tastebud-models-v1";

/// Where a file came from, for the progress events and the load report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Network,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Network => "network",
        }
    }
}

/// A fetcher with its progress callback and the cache, if the browser offers one.
pub struct ModelStore {
    cache: Option<Cache>,
    on_progress: Option<Function>,
    /// Things that went wrong but lost nothing (a cache that refused a file: quota, private
    /// mode), reported with the load.
    pub warnings: Vec<String>,
}

fn describe(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

fn global(name: &str) -> Option<JsValue> {
    Reflect::get(&js_sys::global(), &name.into())
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

async fn wait(promise: js_sys::Promise) -> Result<JsValue, String> {
    JsFuture::from(promise).await.map_err(|e| describe(&e))
}

/// Lower-case hex sha256 through SubtleCrypto.
async fn sha256(bytes: &[u8]) -> Result<String, String> {
    let subtle: SubtleCrypto = global("crypto")
        .and_then(|c| Reflect::get(&c, &"subtle".into()).ok())
        .filter(|s| !s.is_undefined())
        .ok_or("this page has no SubtleCrypto (it needs https or localhost)")?
        .unchecked_into();
    let digest = subtle
        .digest_with_str_and_u8_array("SHA-256", bytes)
        .map_err(|e| describe(&e))?;
    let digest = Uint8Array::new(&wait(digest).await?).to_vec();
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The file's problem against its manifest entry, if any.
async fn mismatch(entry: &ManifestFile, bytes: &[u8]) -> Result<Option<String>, String> {
    if bytes.len() as u64 != entry.bytes {
        return Ok(Some(format!(
            "{} bytes, the manifest records {}",
            bytes.len(),
            entry.bytes
        )));
    }
    let got = sha256(bytes).await?;
    Ok((got != entry.sha256).then(|| {
        format!(
            "sha256 {got}, the manifest records {} (damaged or changed)",
            entry.sha256
        )
    }))
}

impl ModelStore {
    /// Opens the cache (none in browsers or modes without the Cache API: files are then
    /// fetched every time, and a warning says so).
    pub async fn open(on_progress: Option<Function>) -> Self {
        let mut warnings = Vec::new();
        let cache = match global("caches") {
            Some(caches) => {
                let caches: CacheStorage = caches.unchecked_into();
                match wait(caches.open(CACHE_NAME)).await {
                    Ok(c) => Some(c.unchecked_into::<Cache>()),
                    Err(e) => {
                        warnings.push(format!("the model cache could not be opened: {e}"));
                        None
                    }
                }
            }
            None => {
                warnings.push("this browser offers no Cache API: models are not kept".into());
                None
            }
        };
        Self {
            cache,
            on_progress,
            warnings,
        }
    }

    fn progress(&self, file: &str, loaded: u64, total: Option<u64>, source: Source) {
        let Some(f) = &self.on_progress else { return };
        let event = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&event, &k.into(), &v).ok();
        set("file", file.into());
        set("loaded", (loaded as f64).into());
        set(
            "total",
            total.map_or(JsValue::UNDEFINED, |t| (t as f64).into()),
        );
        set("source", source.name().into());
        // A throwing progress callback is the page's problem, not the download's.
        let _ = f.call1(&JsValue::NULL, &event);
    }

    /// GETs `url` as bytes, streaming with progress; `label` names it in errors and events.
    /// `Ok(None)` for a 404 (callers that try alternatives move on).
    pub async fn download(
        &self,
        label: &str,
        url: &str,
        expected: Option<u64>,
    ) -> Result<Option<Vec<u8>>, String> {
        let fetch: Function = global("fetch")
            .ok_or("this context has no fetch")?
            .unchecked_into();
        let response = fetch
            .call1(&js_sys::global(), &url.into())
            .map_err(|e| describe(&e))?;
        let response: Response = wait(response.unchecked_into())
            .await
            .map_err(|e| format!("{label}: could not fetch {url}: {e}"))?
            .unchecked_into();
        if response.status() == 404 {
            return Ok(None);
        }
        if !response.ok() {
            return Err(format!(
                "{label}: {url} answered HTTP {}",
                response.status()
            ));
        }
        let total = expected.or_else(|| {
            response
                .headers()
                .get("content-length")
                .ok()
                .flatten()
                .and_then(|v| v.parse().ok())
        });
        // A size the server states is a hint, not a promise: reserve at most 64 MiB up front.
        let mut bytes: Vec<u8> = Vec::with_capacity(total.unwrap_or(0).min(1 << 26) as usize);
        let Some(body) = response.body() else {
            return Ok(Some(bytes));
        };
        let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        loop {
            let chunk = wait(reader.read())
                .await
                .map_err(|e| format!("{label}: the download from {url} broke off: {e}"))?;
            let done = Reflect::get(&chunk, &"done".into()).map_err(|e| describe(&e))?;
            if done.is_truthy() {
                break;
            }
            let value = Reflect::get(&chunk, &"value".into()).map_err(|e| describe(&e))?;
            let part: Uint8Array = value.unchecked_into();
            let start = bytes.len();
            bytes.resize(start + part.length() as usize, 0);
            part.copy_to(&mut bytes[start..]);
            // A server sending more than the manifest says is not streamed to the end.
            if let Some(limit) = expected.filter(|&e| bytes.len() as u64 > e) {
                return Err(format!(
                    "{label}: {url} sent more than the {limit} bytes the manifest records"
                ));
            }
            self.progress(label, bytes.len() as u64, total, Source::Network);
        }
        Ok(Some(bytes))
    }

    /// The cache key of a manifest entry: its URL and hash, so a new version never meets an
    /// old copy.
    fn key(url: &str, entry: &ManifestFile) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}tastebud-sha256={}", entry.sha256)
    }

    async fn cached(&self, key: &str) -> Option<Vec<u8>> {
        let cache = self.cache.as_ref()?;
        let hit = wait(cache.match_with_str(key)).await.ok()?;
        let response: Response = hit.dyn_into().ok()?;
        let buffer = wait(response.array_buffer().ok()?).await.ok()?;
        Some(Uint8Array::new(&buffer).to_vec())
    }

    async fn store(&mut self, label: &str, key: &str, bytes: &[u8]) {
        let Some(cache) = &self.cache else { return };
        let body = Uint8Array::from(bytes);
        let put = Response::new_with_opt_buffer_source(Some(&body))
            .map(|response| cache.put_with_str(key, &response));
        let result = match put {
            Ok(promise) => wait(promise).await.map(|_| ()),
            Err(e) => Err(describe(&e)),
        };
        if let Err(e) = result {
            self.warnings.push(format!(
                "{label} was not cached ({e}); it will be fetched again next visit"
            ));
        }
    }

    /// One manifest file at `url`, from the cache when a good copy is there, else from the
    /// network; checked either way. `label` names it (the manifest's path).
    pub async fn fetch_checked(
        &mut self,
        entry: &ManifestFile,
        url: &str,
    ) -> Result<(Vec<u8>, Source), String> {
        let label = entry.file.as_str();
        let key = Self::key(url, entry);
        if let Some(bytes) = self.cached(&key).await {
            match mismatch(entry, &bytes).await? {
                None => {
                    self.progress(label, entry.bytes, Some(entry.bytes), Source::Cache);
                    return Ok((bytes, Source::Cache));
                }
                Some(problem) => {
                    self.warnings.push(format!(
                        "the cached copy of {label} was refused ({problem}) and fetched again"
                    ));
                    if let Some(cache) = &self.cache {
                        let _ = wait(cache.delete_with_str(&key)).await;
                    }
                }
            }
        }
        let bytes = self
            .download(label, url, Some(entry.bytes))
            .await?
            .ok_or_else(|| format!("{label}: {url} was not found (HTTP 404)"))?;
        if let Some(problem) = mismatch(entry, &bytes).await? {
            return Err(format!("{label}: damaged download from {url}: {problem}"));
        }
        self.store(label, &key, &bytes).await;
        Ok((bytes, Source::Network))
    }
}

/// The manifest at `base` (a folder URL ending in `/`): from the network, else (offline) the
/// copy cached on the last visit; `None` when the folder has none (a plain snapshot).
pub async fn fetch_manifest(
    store: &mut ModelStore,
    base: &str,
) -> Result<Option<Manifest>, String> {
    let url = format!("{base}manifest.json");
    let bytes = match store.download("manifest.json", &url, None).await {
        Ok(Some(bytes)) => {
            store.store("manifest.json", &url, &bytes).await;
            bytes
        }
        Ok(None) => return Ok(None),
        Err(e) => match store.cached(&url).await {
            Some(bytes) => {
                store.warnings.push(format!(
                    "offline ({e}): using the manifest cached on the last visit"
                ));
                bytes
            }
            None => return Err(e),
        },
    };
    Manifest::from_json(&url, &bytes)
        .map(Some)
        .map_err(|e| e.to_string())
}
