//! The training loop, metrics and loss weighting.
