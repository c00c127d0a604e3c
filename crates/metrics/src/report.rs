//! Per-class precision, recall and F1, and their averages.

use std::fmt;

use std::io;
use unicode_width::UnicodeWidthStr;

use crate::confusion::{ConfusionMatrix, ratio};

/// One class's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassMetrics {
    /// Of the samples predicted as this class, the fraction that are. When the class was never
    /// predicted this is 0 and [`ClassMetrics::never_predicted`] is set (it is undefined, not
    /// perfect).
    pub precision: f64,
    /// Of the samples of this class, the fraction predicted as it. 0 when the class has no
    /// samples, with [`ClassMetrics::support`] 0.
    pub recall: f64,
    /// The harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// The number of samples of this class.
    pub support: u64,
    /// No sample was predicted as this class, so its precision is undefined and reported as 0.
    pub never_predicted: bool,
}

/// Averages over classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Averages {
    /// Mean precision.
    pub precision: f64,
    /// Mean recall.
    pub recall: f64,
    /// Mean F1.
    pub f1: f64,
}

/// A classification report: per-class scores, accuracy, macro averages (each class counts the
/// same) and weighted averages (each class counts by its support).
///
/// ```
/// let mut cm = metrics::ConfusionMatrix::new(2);
/// cm.add_batch(&[0, 0, 1, 1], &[0, 0, 0, 1]);
/// let r = cm.report();
/// assert_eq!(r.classes[0].precision, 2.0 / 3.0); // two of three predicted 0 are 0
/// assert_eq!(r.classes[1].recall, 0.5);          // one of two 1s found
/// assert_eq!(r.accuracy, 0.75);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Scores per class, by class index.
    pub classes: Vec<ClassMetrics>,
    /// The fraction of correct predictions.
    pub accuracy: f64,
    /// Unweighted means over classes.
    pub macro_avg: Averages,
    /// Means weighted by support.
    pub weighted_avg: Averages,
    /// The number of samples.
    pub total: u64,
}

impl Report {
    pub(crate) fn from_matrix(cm: &ConfusionMatrix) -> Self {
        let classes: Vec<ClassMetrics> = (0..cm.classes())
            .map(|c| {
                let tp = cm.count(c, c);
                let predicted = cm.predicted(c);
                let support = cm.support(c);
                let precision = ratio(tp, predicted).unwrap_or(0.0);
                let recall = ratio(tp, support).unwrap_or(0.0);
                let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
                ClassMetrics { precision, recall, f1, support, never_predicted: predicted == 0 }
            })
            .collect();
        let total = cm.total();
        let k = classes.len() as f64;
        let mean = |f: fn(&ClassMetrics) -> f64| classes.iter().map(f).sum::<f64>() / k;
        let weighted = |f: fn(&ClassMetrics) -> f64| {
            if total == 0 {
                return 0.0;
            }
            classes.iter().map(|c| f(c) * c.support as f64).sum::<f64>() / total as f64
        };
        let macro_avg = Averages { precision: mean(|c| c.precision), recall: mean(|c| c.recall), f1: mean(|c| c.f1) };
        let weighted_avg =
            Averages { precision: weighted(|c| c.precision), recall: weighted(|c| c.recall), f1: weighted(|c| c.f1) };
        Self { accuracy: cm.accuracy(), classes, macro_avg, weighted_avg, total }
    }

    /// Writes the report as CSV: `class,precision,recall,f1,support,never_predicted`, one row per
    /// class, then `accuracy`, `macro avg` and `weighted avg` rows.
    ///
    /// # Errors
    /// Any error of the writer.
    pub fn write_csv<W: io::Write>(&self, writer: W) -> csv::Result<()> {
        let mut w = csv::Writer::from_writer(writer);
        w.write_record(["class", "precision", "recall", "f1", "support", "never_predicted"])?;
        for (i, c) in self.classes.iter().enumerate() {
            w.write_record([
                i.to_string(),
                format!("{:.6}", c.precision),
                format!("{:.6}", c.recall),
                format!("{:.6}", c.f1),
                c.support.to_string(),
                c.never_predicted.to_string(),
            ])?;
        }
        let total = self.total.to_string();
        w.write_record(["accuracy", "", "", &format!("{:.6}", self.accuracy), &total, ""])?;
        for (name, a) in [("macro avg", self.macro_avg), ("weighted avg", self.weighted_avg)] {
            let row = [format!("{:.6}", a.precision), format!("{:.6}", a.recall), format!("{:.6}", a.f1)];
            w.write_record([name, &row[0], &row[1], &row[2], &total, ""])?;
        }
        w.flush()?;
        Ok(())
    }
}

impl Report {
    /// The table of [`Report`]'s `Display` with each class called by its name (`names[i]`
    /// for class `i`) instead of its number.
    ///
    /// ```
    /// let mut cm = metrics::ConfusionMatrix::new(2);
    /// cm.add_batch(&[0, 1], &[0, 1]);
    /// let names = ["Trouser".to_owned(), "Ankle boot".to_owned()];
    /// assert!(cm.report().named(&names).to_string().contains("  Ankle boot   1.0000"));
    /// ```
    pub fn named<'a>(&'a self, names: &'a [String]) -> Named<'a, Self> {
        Named { table: self, names }
    }

    fn write_table(&self, f: &mut fmt::Formatter<'_>, names: Option<&[String]>) -> fmt::Result {
        let name = |i: usize| names.and_then(|n| n.get(i)).map_or_else(|| i.to_string(), Clone::clone);
        let width = (0..self.classes.len()).map(|i| name(i).width()).max().unwrap_or(0).max(12);
        writeln!(f, "{:>width$} {:>9} {:>9} {:>9} {:>9}", "class", "precision", "recall", "f1", "support")?;
        for (i, c) in self.classes.iter().enumerate() {
            let mark = if c.never_predicted { "*" } else { " " };
            let label = name(i);
            // Padding counts terminal columns, so that names beyond ASCII line up.
            let pad = width.saturating_sub(label.width());
            writeln!(
                f,
                "{:pad$}{label} {:>8.4}{mark} {:>9.4} {:>9.4} {:>9}",
                "", c.precision, c.recall, c.f1, c.support
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{:>width$} {:>9} {:>9} {:>9.4} {:>9}", "accuracy", "", "", self.accuracy, self.total)?;
        for (name, a) in [("macro avg", self.macro_avg), ("weighted avg", self.weighted_avg)] {
            writeln!(f, "{name:>width$} {:>9.4} {:>9.4} {:>9.4} {:>9}", a.precision, a.recall, a.f1, self.total)?;
        }
        if self.classes.iter().any(|c| c.never_predicted) {
            writeln!(f, "* never predicted: precision is undefined and counted as 0")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    /// An aligned table in the style of scikit-learn's `classification_report`; a class never
    /// predicted has its precision marked with `*` and explained below the table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_table(f, None)
    }
}

/// A table whose classes are called by their names: [`Report::named`],
/// [`ConfusionMatrix::named`](crate::ConfusionMatrix::named).
#[derive(Debug, Clone, Copy)]
pub struct Named<'a, T> {
    pub(crate) table: &'a T,
    pub(crate) names: &'a [String],
}

impl fmt::Display for Named<'_, Report> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table.write_table(f, Some(self.names))
    }
}

#[cfg(test)]
mod tests {
    use crate::ConfusionMatrix;

    #[test]
    fn scores_by_hand() {
        // truth 0 0 0 1 1 2, predicted 0 0 1 1 0 0:
        // class 0: tp 2, predicted 4, support 3 -> p 1/2, r 2/3, f1 4/7
        // class 1: tp 1, predicted 2, support 2 -> p 1/2, r 1/2, f1 1/2
        // class 2: tp 0, predicted 0, support 1 -> p 0 (never predicted), r 0, f1 0
        let mut cm = ConfusionMatrix::new(3);
        cm.add_batch(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 0, 0]);
        let r = cm.report();
        assert_eq!((r.classes[0].precision, r.classes[0].recall), (0.5, 2.0 / 3.0));
        assert!((r.classes[0].f1 - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!((r.classes[1].precision, r.classes[1].recall, r.classes[1].f1), (0.5, 0.5, 0.5));
        assert_eq!((r.classes[2].precision, r.classes[2].f1), (0.0, 0.0));
        assert!(r.classes[2].never_predicted && !r.classes[0].never_predicted);
        assert_eq!(r.accuracy, 0.5);
        // Macro: mean of (1/2, 1/2, 0) = 1/3; weighted by support 3, 2, 1: (3/2 + 1 + 0) / 6.
        assert!((r.macro_avg.precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.weighted_avg.precision - 2.5 / 6.0).abs() < 1e-12);
        assert!(r.classes.iter().all(|c| c.precision.is_finite() && c.recall.is_finite() && c.f1.is_finite()));
    }

    #[test]
    fn the_table_marks_never_predicted_classes() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add_batch(&[0, 1], &[0, 0]);
        let table = cm.report().to_string();
        assert!(table.contains("   0.0000*"), "{table}");
        assert!(table.ends_with("* never predicted: precision is undefined and counted as 0\n"), "{table}");
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines[0], "       class precision    recall        f1   support");
        assert_eq!(lines[1], "           0   0.5000     1.0000    0.6667         1");
    }

    #[test]
    fn csv_rows() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add_batch(&[0, 1], &[0, 0]);
        let mut out = Vec::new();
        cm.report().write_csv(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "class,precision,recall,f1,support,never_predicted");
        assert_eq!(lines[2], "1,0.000000,0.000000,0.000000,1,true");
        assert_eq!(lines[3], "accuracy,,,0.500000,2,");
        assert_eq!(lines.len(), 6);
    }
}
