//! `polyhead eval`.

use anyhow::Result;

pub fn run(_args: &crate::cli::EvalArgs) -> Result<()> {
    crate::usage!("not available")
}
