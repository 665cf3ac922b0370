//! `polyhead predict`.

use anyhow::Result;

pub fn run(_args: &crate::cli::PredictArgs) -> Result<()> {
    crate::usage!("not available")
}
