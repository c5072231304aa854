//! Temporaries: each file and symlink is made under a name of its own beside its final
//! name and renamed into place only once complete, so the final name never shows a half
//! file. The names are recognizably tether's (`.NAME.tether-XXXXXX`) for whoever finds
//! one left by a copy that was killed outright.

use nix::errno::Errno;
use nix::unistd::UnlinkatFlags;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The marker in every temporary's name.
pub const TEMP_MARKER: &str = ".tether-";

/// A temporary name for `name`: `.NAME.tether-XXXXXX`, with `NAME` cut (at a character
/// boundary) so the whole stays within 255 bytes.
///
/// ```
/// let t = tether_files::temp_name("app.log");
/// assert!(t.starts_with(".app.log.tether-") && t.len() == ".app.log.tether-".len() + 6);
/// assert!(tether_files::temp_name(&"é".repeat(127)).len() <= 255);
/// ```
pub fn temp_name(name: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).expect("the operating system's random source");
    let suffix: String = random
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    let room = 255 - 1 - TEMP_MARKER.len() - suffix.len();
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{TEMP_MARKER}{suffix}", &name[..cut])
}

/// Whether `name` looks like one of tether's temporaries.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(TEMP_MARKER)
            .is_some_and(|(_, s)| s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A temporary in a directory, removed when dropped unless [`Temp::committed`].
pub(crate) struct Temp {
    pub(crate) dir: Arc<OwnedFd>,
    pub(crate) name: String,
    live: bool,
}

impl Temp {
    /// Runs `make` with fresh temporary names for `final_name` until one is free
    /// (`make` fails with EEXIST when taken).
    pub(crate) fn create<T>(
        dir: &Arc<OwnedFd>,
        final_name: &str,
        mut make: impl FnMut(&str) -> Result<T, Errno>,
    ) -> Result<(Temp, T), Errno> {
        loop {
            let name = temp_name(final_name);
            match make(&name) {
                Ok(t) => {
                    let temp = Temp {
                        dir: dir.clone(),
                        name,
                        live: true,
                    };
                    return Ok((temp, t));
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames the temporary to `final_name` in the same directory, replacing what is
    /// there (atomically); it is no longer removed on drop.
    pub(crate) fn commit(mut self, final_name: &str) -> Result<(), Errno> {
        nix::fcntl::renameat(
            self.dir.as_ref(),
            self.name.as_str(),
            self.dir.as_ref(),
            final_name,
        )?;
        self.live = false;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.live {
            let _ = nix::unistd::unlinkat(
                self.dir.as_ref(),
                self.name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_recognizable_and_fresh() {
        let a = temp_name("x");
        let b = temp_name("x");
        assert_ne!(a, b);
        assert!(is_temp_name(&a));
        assert!(!is_temp_name("x"));
        assert!(!is_temp_name(".x.tether-ab"));
        assert!(is_temp_name(&temp_name(&"n".repeat(255))));
    }
}
