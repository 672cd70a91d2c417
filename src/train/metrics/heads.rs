//! Dev metrics of the heads beyond classification: Pearson / Spearman correlation and mean
//! squared error (regression), micro / macro F1 at logit 0 (multi-label classification), and
//! entity-level precision / recall / F1 over BIO / IOB2 chunks with exact spans, as seqeval's
//! default (conlleval) mode computes them (tagging).

/// Pearson's correlation of `x` and `y` (0 when either is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n as f64, y.iter().sum::<f64>() / n as f64);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (a, b) = (x[i] - mx, y[i] - my);
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks from 1, ties sharing their mean rank (as scipy's `rankdata`).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation: Pearson's of the ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Mean squared error.
pub fn mse(pred: &[f64], gold: &[f64]) -> f64 {
    let n = pred.len().min(gold.len()).max(1);
    pred.iter().zip(gold).map(|(p, g)| (p - g) * (p - g)).sum::<f64>() / n as f64
}

/// F1 from true positives, false positives and false negatives (0 when all are 0).
fn f1(tp: u64, fp: u64, fneg: u64) -> f64 {
    if tp == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (2 * tp + fp + fneg) as f64
}

/// Micro and macro F1 of multi-label predictions: label `k` of row `r` is predicted when
/// `logits[r·labels + k] > 0` (probability > 0.5) and gold when `targets[…] > 0.5`. Macro F1
/// averages over every label (a label never gold nor predicted counts 0, as scikit-learn's
/// `zero_division=0`).
pub fn multilabel_f1(logits: &[f32], targets: &[f32], labels: usize) -> (f64, f64) {
    let mut counts = vec![(0u64, 0u64, 0u64); labels.max(1)];
    for (i, (&x, &y)) in logits.iter().zip(targets).enumerate() {
        let c = &mut counts[i % labels.max(1)];
        match (x > 0.0, y > 0.5) {
            (true, true) => c.0 += 1,
            (true, false) => c.1 += 1,
            (false, true) => c.2 += 1,
            (false, false) => {}
        }
    }
    let (tp, fp, fneg) = counts.iter().fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let macro_f1 = counts.iter().map(|c| f1(c.0, c.1, c.2)).sum::<f64>() / counts.len() as f64;
    (f1(tp, fp, fneg), macro_f1)
}

/// A tag's chunk prefix (`B`, `I`, `E`, `S`, or `O` outside) and entity type. A tag with no
/// `X-` prefix other than `O` is taken as `I-` of its own type.
fn split_tag(tag: &str) -> (char, &str) {
    if tag == "O" || tag.is_empty() {
        return ('O', "");
    }
    match tag.split_once('-') {
        Some((p, t)) if matches!(p, "B" | "I" | "E" | "S") => (p.chars().next().unwrap_or('I'), t),
        _ => ('I', tag),
    }
}

/// The entity chunks `(type, first word, last word)` of one sentence's tags (conlleval rules:
/// an `I-` after `O` or after another type starts a chunk).
pub fn chunks(tags: &[&str]) -> Vec<(String, usize, usize)> {
    let mut out = vec![];
    let mut open: Option<(String, usize)> = None;
    let (mut prev_p, mut prev_t) = ('O', "");
    for (i, tag) in tags.iter().enumerate() {
        let (p, t) = split_tag(tag);
        let ends = matches!(prev_p, 'E' | 'S')
            || (matches!(prev_p, 'B' | 'I') && (matches!(p, 'B' | 'S' | 'O') || t != prev_t));
        let starts =
            matches!(p, 'B' | 'S') || (matches!(p, 'I' | 'E') && (matches!(prev_p, 'E' | 'S' | 'O') || t != prev_t));
        if ends {
            if let Some((ty, s)) = open.take() {
                out.push((ty, s, i - 1));
            }
        }
        if starts {
            open = Some((t.to_string(), i));
        }
        (prev_p, prev_t) = (p, t);
    }
    if let Some((ty, s)) = open {
        out.push((ty, s, tags.len() - 1));
    }
    out
}

/// Entity-level precision, recall and F1 over sentences of (gold, predicted) word tags: a
/// predicted entity counts when a gold one has the same type and span.
pub fn entity_scores(sentences: &[(Vec<&str>, Vec<&str>)]) -> (f64, f64, f64) {
    let (mut correct, mut predicted, mut gold) = (0u64, 0u64, 0u64);
    for (g, p) in sentences {
        let (gc, pc) = (chunks(g), chunks(p));
        gold += gc.len() as u64;
        predicted += pc.len() as u64;
        correct += pc.iter().filter(|c| gc.contains(c)).count() as u64;
    }
    let precision = if predicted == 0 { 0.0 } else { correct as f64 / predicted as f64 };
    let recall = if gold == 0 { 0.0 } else { correct as f64 / gold as f64 };
    (precision, recall, f1(correct, predicted - correct, gold - correct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations_and_mse() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&x, &[1.0; 4]), 0.0);
        // Monotone but not linear: Spearman 1, Pearson below.
        let y = [1.0, 8.0, 27.0, 64.0];
        assert!((spearman(&x, &y) - 1.0).abs() < 1e-12 && pearson(&x, &y) < 0.99);
        // Ties share their mean rank (scipy: rankdata([1, 2, 2, 3]) = [1, 2.5, 2.5, 4]).
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), [1.0, 2.5, 2.5, 4.0]);
        assert_eq!(mse(&[1.0, 3.0], &[2.0, 1.0]), 2.5);
    }

    #[test]
    fn multilabel_micro_and_macro_f1() {
        // Label 0: tp 1, fn 1 → F1 2/3; label 1: tp 1, fp 1 → 2/3; label 2: never → 0.
        let logits = [1.0, 1.0, -1.0, -1.0, 1.0, -1.0];
        let targets = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        let (micro, macro_f1) = multilabel_f1(&logits, &targets, 3);
        assert!((micro - 2.0 / 3.0).abs() < 1e-12, "{micro}");
        assert!((macro_f1 - 4.0 / 9.0).abs() < 1e-12, "{macro_f1}");
    }

    #[test]
    fn chunks_follow_conlleval() {
        let c = chunks(&["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "S-MISC"]);
        assert_eq!(
            c,
            [
                ("PER".into(), 0, 1),
                ("LOC".into(), 3, 4),
                ("LOC".into(), 5, 5),
                ("ORG".into(), 6, 6),
                ("MISC".into(), 7, 7)
            ]
        );
        // seqeval's README example: one of two gold entities found, one wrong span predicted.
        let gold = vec!["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"];
        let pred = vec!["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"];
        let gold2 = vec!["B-PER", "I-PER", "O"];
        let (p, r, f) = entity_scores(&[(gold, pred), (gold2.clone(), gold2)]);
        assert_eq!((p, r, f), (0.5, 0.5, 0.5));
    }
}
