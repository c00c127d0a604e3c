//! A confusion matrix accumulated batch by batch.

use std::fmt;

use unicode_width::UnicodeWidthStr;

use crate::report::Named;
use std::io;

use crate::report::Report;

/// Counts of (true class, predicted class) pairs for `k` classes: row = truth, column =
/// prediction.
///
/// ```
/// let mut cm = metrics::ConfusionMatrix::new(3);
/// cm.add_batch(&[0, 1, 2, 2], &[0, 2, 2, 2]);
/// assert_eq!(cm.total(), 4);
/// assert_eq!(cm.accuracy(), 0.75);
/// assert_eq!(cm.count(1, 2), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix for classes `0..classes`.
    ///
    /// # Panics
    /// If `classes` is zero.
    #[track_caller]
    pub fn new(classes: usize) -> Self {
        assert!(classes > 0, "a confusion matrix needs at least one class");
        Self { classes, counts: vec![0; classes * classes] }
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Records one prediction.
    ///
    /// # Panics
    /// If a class is out of range.
    #[track_caller]
    pub fn add(&mut self, truth: usize, predicted: usize) {
        assert!(truth < self.classes && predicted < self.classes, "class out of range 0..{}", self.classes);
        self.counts[truth * self.classes + predicted] += 1;
    }

    /// Records a batch of predictions, pairwise.
    ///
    /// # Panics
    /// If the slices differ in length or a class is out of range.
    #[track_caller]
    pub fn add_batch(&mut self, truth: &[usize], predicted: &[usize]) {
        assert_eq!(truth.len(), predicted.len(), "{} labels for {} predictions", truth.len(), predicted.len());
        for (&t, &p) in truth.iter().zip(predicted) {
            self.add(t, p);
        }
    }

    /// Adds another matrix's counts (from another batch, thread or shard).
    ///
    /// # Panics
    /// If the class counts differ.
    #[track_caller]
    pub fn merge(&mut self, other: &Self) {
        assert_eq!(self.classes, other.classes, "merging matrices of different sizes");
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
    }

    /// How many samples of class `truth` were predicted as `predicted`.
    ///
    /// # Panics
    /// If a class is out of range.
    #[track_caller]
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        assert!(truth < self.classes && predicted < self.classes, "class out of range 0..{}", self.classes);
        self.counts[truth * self.classes + predicted]
    }

    /// The number of samples recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The number of correct predictions (the diagonal).
    pub fn correct(&self) -> u64 {
        (0..self.classes).map(|c| self.count(c, c)).sum()
    }

    /// The fraction of correct predictions; 0 when nothing was recorded.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.total()).unwrap_or(0.0)
    }

    /// Samples whose true class is `class` (the row sum): the class's support.
    pub fn support(&self, class: usize) -> u64 {
        (0..self.classes).map(|p| self.count(class, p)).sum()
    }

    /// Samples predicted as `class` (the column sum).
    pub fn predicted(&self, class: usize) -> u64 {
        (0..self.classes).map(|t| self.count(t, class)).sum()
    }

    /// Per-class precision, recall, F1 and support, with macro and weighted averages.
    pub fn report(&self) -> Report {
        Report::from_matrix(self)
    }

    /// Writes the matrix as CSV: a header `true\predicted,0,1,…`, then one row per true class.
    ///
    /// # Errors
    /// Any error of the writer.
    pub fn write_csv<W: io::Write>(&self, writer: W) -> csv::Result<()> {
        let mut w = csv::Writer::from_writer(writer);
        let mut header = vec!["true\\predicted".to_owned()];
        header.extend((0..self.classes).map(|c| c.to_string()));
        w.write_record(&header)?;
        for t in 0..self.classes {
            let mut row = vec![t.to_string()];
            row.extend((0..self.classes).map(|p| self.count(t, p).to_string()));
            w.write_record(&row)?;
        }
        w.flush()?;
        Ok(())
    }
}

/// `num / den`, or `None` when `den` is zero.
pub(crate) fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl ConfusionMatrix {
    /// The table of `Display` with each class called by its name (`names[i]` for class `i`):
    /// in full at the start of its row, and cut to [`COLUMN_NAME_CHARS`] characters atop its
    /// column.
    ///
    /// ```
    /// let mut cm = metrics::ConfusionMatrix::new(2);
    /// cm.add_batch(&[0, 1, 1], &[0, 1, 0]);
    /// let names = ["Sandal".to_owned(), "Sneaker".to_owned()];
    /// assert_eq!(cm.named(&names).to_string(), "        Sandal Sneake\n Sandal      1      0\nSneaker      1      1\n");
    /// ```
    pub fn named<'a>(&'a self, names: &'a [String]) -> Named<'a, Self> {
        Named { table: self, names }
    }

    fn write_table(&self, f: &mut fmt::Formatter<'_>, names: Option<&[String]>) -> fmt::Result {
        let name = |i: usize| names.and_then(|n| n.get(i)).map_or_else(|| i.to_string(), Clone::clone);
        let column_name = |i: usize| name(i).chars().take(COLUMN_NAME_CHARS).collect::<String>();
        let chars = |s: &str| s.width();
        let width = self.counts.iter().max().map_or(1, |m| m.to_string().len()).max(self.classes.to_string().len());
        let width = (0..self.classes).map(|p| chars(&column_name(p))).max().unwrap_or(0).max(width);
        let row_width = (0..self.classes).map(|t| chars(&name(t))).max().unwrap_or(0).max(5);
        // Padding counts terminal columns, so that names beyond ASCII line up.
        let right = |f: &mut fmt::Formatter<'_>, text: &str, width: usize| {
            write!(f, "{:pad$}{text}", "", pad = width.saturating_sub(chars(text)))
        };
        right(f, "", row_width)?;
        for p in 0..self.classes {
            f.write_str(" ")?;
            right(f, &column_name(p), width)?;
        }
        writeln!(f)?;
        for t in 0..self.classes {
            right(f, &name(t), row_width)?;
            for p in 0..self.classes {
                write!(f, " {:>width$}", self.count(t, p))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// How much of a class's name heads its column in [`ConfusionMatrix::named`]'s table.
pub const COLUMN_NAME_CHARS: usize = 6;

impl fmt::Display for ConfusionMatrix {
    /// An aligned table, rows are true classes and columns predicted ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_table(f, None)
    }
}

impl fmt::Display for Named<'_, ConfusionMatrix> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table.write_table(f, Some(self.names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_rows_as_truth_and_columns_as_predictions() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add_batch(&[0, 0, 1, 1, 1], &[0, 1, 1, 1, 0]);
        assert_eq!((cm.count(0, 0), cm.count(0, 1), cm.count(1, 0), cm.count(1, 1)), (1, 1, 1, 2));
        assert_eq!((cm.support(1), cm.predicted(1)), (3, 3));
        assert_eq!(cm.accuracy(), 0.6);
        assert_eq!(cm.to_string(), "      0 1\n    0 1 1\n    1 1 2\n");
    }

    #[test]
    fn an_empty_matrix_has_accuracy_zero_not_nan() {
        assert_eq!(ConfusionMatrix::new(3).accuracy(), 0.0);
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_class() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add_batch(&[0, 1], &[1, 1]);
        let mut out = Vec::new();
        cm.write_csv(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "true\\predicted,0,1\n0,0,1\n1,0,1\n");
    }

    proptest! {
        #[test]
        fn totals_equal_the_number_of_samples(pairs in proptest::collection::vec((0usize..7, 0usize..7), 0..300)) {
            let mut cm = ConfusionMatrix::new(7);
            let (truth, pred): (Vec<_>, Vec<_>) = pairs.iter().copied().unzip();
            // Split into two batches and merge, as shards would.
            let mid = truth.len() / 2;
            cm.add_batch(&truth[..mid], &pred[..mid]);
            let mut other = ConfusionMatrix::new(7);
            other.add_batch(&truth[mid..], &pred[mid..]);
            cm.merge(&other);
            prop_assert_eq!(cm.total(), pairs.len() as u64);
            prop_assert_eq!((0..7).map(|c| cm.support(c)).sum::<u64>(), pairs.len() as u64);
            prop_assert_eq!((0..7).map(|c| cm.predicted(c)).sum::<u64>(), pairs.len() as u64);
            prop_assert_eq!(cm.correct(), pairs.iter().filter(|(t, p)| t == p).count() as u64);
        }
    }

    #[test]
    fn named_tables_line_up_in_terminal_columns_with_wide_characters() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add_batch(&[0, 1, 1], &[0, 1, 0]);
        let names = ["く (ku)".to_owned(), "Sneaker".to_owned()];
        for table in [cm.named(&names).to_string(), cm.report().named(&names).to_string()] {
            let rows: Vec<&str> = table.lines().filter(|l| l.contains("く") || l.contains("Sneaker")).collect();
            let widths: Vec<usize> = rows.iter().map(|r| r.width()).collect();
            assert!(widths.len() >= 2 && widths.windows(2).all(|w| w[0] == w[1]), "{table}");
        }
    }
}
