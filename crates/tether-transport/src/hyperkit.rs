//! hyperkit's virtio-sock host side: a host connects to `DIR/connect` and writes an
//! 18-byte header naming the guest CID and port; hyperkit answers nothing (a refusal
//! shows as the socket closing). Guest connections to host port P arrive on a listener
//! at `DIR/00000002.<P as %08x>`.

use std::path::{Path, PathBuf};

/// The header a host writes to `DIR/connect`: `"%08x.%08x\n"` of CID and port.
pub fn connect_header(cid: u32, port: u32) -> String {
    format!("{cid:08x}.{port:08x}\n")
}

/// The socket hyperkit connects to for guest connections to host `port`.
pub fn listen_path(dir: &Path, port: u32) -> PathBuf {
    dir.join(format!("{:08x}.{port:08x}", crate::endpoint::HOST_CID))
}

/// The socket a host dials.
pub fn connect_path(dir: &Path) -> PathBuf {
    dir.join("connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_18_bytes_lowercase_hex() {
        let h = connect_header(3, 0xABCD);
        assert_eq!(h, "00000003.0000abcd\n");
        assert_eq!(h.len(), 18);
        assert_eq!(connect_header(u32::MAX, 0).len(), 18);
    }

    #[test]
    fn listen_path_names_host_cid_and_port() {
        assert_eq!(
            listen_path(Path::new("/s"), 1024),
            PathBuf::from("/s/00000002.00000400")
        );
    }
}
