//! Shared tokens live in files, never on command lines where other users could read them.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The token in `path`, surrounding whitespace ignored; an empty file is an error.
pub fn read_token(path: &Path) -> Result<Vec<u8>> {
    let raw =
        std::fs::read(path).with_context(|| format!("reading token file {}", path.display()))?;
    let token = raw.trim_ascii().to_vec();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token)
}
