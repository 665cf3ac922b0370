//! `polyhead train`.

use anyhow::Result;

pub fn run(_args: &crate::cli::TrainArgs) -> Result<()> {
    crate::usage!("not available")
}
