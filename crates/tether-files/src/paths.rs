//! The rules for entry paths, and splitting a user's path into a directory and a name.

use crate::error::FilesError;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// The longest entry path accepted (Linux's PATH_MAX).
pub const MAX_ENTRY_PATH: usize = 4096;
/// The longest name accepted (Linux's NAME_MAX).
pub const MAX_NAME: usize = 255;

/// Checks an entry path as a receiver must before touching the filesystem, and returns
/// its components: relative, `/`-separated, no empty, `.` or `..` component, no NUL, at
/// most [`MAX_ENTRY_PATH`] bytes and [`MAX_NAME`] per component.
///
/// ```
/// use tether_files::entry_components;
/// assert_eq!(entry_components("build/lib/a.o").unwrap(), ["build", "lib", "a.o"]);
/// for bad in ["", "/etc/passwd", "a/../../x", "a//b", "a/./b", "a/", "..", "a\0b"] {
///     assert!(entry_components(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn entry_components(path: &str) -> Result<Vec<&str>, FilesError> {
    let bad = |why: &str| FilesError::bad_frame(format!("entry path {path:?} refused: {why}"));
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.len() > MAX_ENTRY_PATH {
        return Err(bad("it is longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad("it is absolute"));
    }
    if path.contains('\0') {
        return Err(bad("it contains a NUL byte"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts {
        match *p {
            "" => return Err(bad("it has an empty component")),
            "." | ".." => return Err(bad("it has a `.` or `..` component")),
            p if p.len() > MAX_NAME => return Err(bad("a component is longer than 255 bytes")),
            _ => {}
        }
    }
    Ok(parts)
}

/// A user's path split into the directory that holds it and its last name, e.g.
/// `/var/log/app.log` into `/var/log` and `app.log`, `notes` into `.` and `notes`.
///
/// Paths without a name of their own (`/`, `.`, `..`, `a/..`) are refused: a copy is
/// named after its source, so name the directory itself.
///
/// ```
/// use std::path::Path;
/// use tether_files::split_path;
/// let (dir, name) = split_path(Path::new("/var/log/app.log")).unwrap();
/// assert_eq!((dir.to_str().unwrap(), name), ("/var/log", "app.log".to_string()));
/// let (dir, name) = split_path(Path::new("notes/")).unwrap();
/// assert_eq!((dir.to_str().unwrap(), name), (".", "notes".to_string()));
/// assert!(split_path(Path::new("/")).is_err());
/// assert!(split_path(Path::new("a/..")).is_err());
/// ```
pub fn split_path(path: &Path) -> Result<(PathBuf, String), FilesError> {
    let mut parts: Vec<Component> = path.components().collect();
    let name = match parts.pop() {
        Some(Component::Normal(n)) => utf8_name(path, n)?,
        _ => {
            return Err(FilesError::new(
                tether_proto::ErrorCode::Io,
                format!(
                    "{}: has no name to copy it under; name the directory itself (e.g. /srv/data, not / or . or ..)",
                    path.display()
                ),
            ))
        }
    };
    let dir: PathBuf = parts.iter().collect();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    Ok((dir, name))
}

/// A name as UTF-8, which entries need (they are JSON strings).
pub(crate) fn utf8_name(path: &Path, name: &OsStr) -> Result<String, FilesError> {
    name.to_str().map(str::to_string).ok_or_else(|| {
        FilesError::new(
            tether_proto::ErrorCode::Io,
            format!(
                "{}: the name is not UTF-8; tether copies UTF-8 names only",
                path.display()
            ),
        )
    })
}

/// Whether a user's path asks for a directory by ending in `/` (or `/.`).
pub(crate) fn wants_dir(path: &Path) -> bool {
    let b = path.as_os_str().as_encoded_bytes();
    b.ends_with(b"/") || b.ends_with(b"/.")
}

/// `base/rel` for messages, without doubling slashes.
pub(crate) fn display_join(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_string()
    } else if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_and_paths_are_refused() {
        let long = "x".repeat(256);
        assert!(entry_components(&long).is_err());
        assert!(entry_components(&"x".repeat(255)).is_ok());
        let deep = vec!["ab"; 2000].join("/");
        assert!(entry_components(&deep).is_err());
    }

    #[test]
    fn trailing_slashes_mean_a_directory() {
        assert!(wants_dir(Path::new("/srv/")));
        assert!(wants_dir(Path::new("/srv/.")));
        assert!(!wants_dir(Path::new("/srv")));
        assert_eq!(display_join("/", "a"), "/a");
        assert_eq!(display_join("/srv", "a"), "/srv/a");
        assert_eq!(display_join("/srv", ""), "/srv");
    }
}
