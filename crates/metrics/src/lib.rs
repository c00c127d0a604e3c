//! Classification metrics for any classifier's predictions. Accumulate a [`ConfusionMatrix`]
//! batch by batch with [`ConfusionMatrix::add_batch`], then read accuracy from it and
//! per-class precision, recall, F1 and support from its [`Report`], which prints as an aligned
//! table and writes CSV.
//!
//! `metrics` stands alone: it takes class indices, whatever produced them. No score is ever
//! NaN: undefined ratios (a class never predicted, or without samples) are reported as 0 and
//! flagged.

mod confusion;
mod report;

pub use confusion::{COLUMN_NAME_CHARS, ConfusionMatrix};
pub use report::{Averages, ClassMetrics, Named, Report};
