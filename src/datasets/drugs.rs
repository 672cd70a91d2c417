//! The Drugs.com reviews (explabox demo subset): `drugsCom.zip` and its two TSV files.

use super::text::{clean_whitespace, LineCounter};
use super::Split;
use crate::train::data::Example;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{prepare, texts, PrepareOptions, Task};

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
}
