//! Shared tokens live in files, never on command lines where other users could read them.

use anyhow::Result;
use std::path::Path;

/// The token in `path`, surrounding whitespace ignored; an empty file is an error.
pub fn read_token(path: &Path) -> Result<Vec<u8>> {
    Ok(tether_proto::read_token_file(path)?)
}
