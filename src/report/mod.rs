//! The HTML report and the data it is made from: per-epoch metrics of a
//! run, a model's per-class scores, and the multi-task against
//! single-task comparison.

pub mod charts;
pub mod comparison;
pub mod html;
pub mod metrics;
pub mod sections;
