//! Reading the files an operator points reveille at — the routes file, certificates and keys, the config file,
//! the starting page's template, token and TLS files — within bounds: regular files only, at most a size limit.
//!
//! A routes path that was a symlink to `/dev/zero` once took reveille from 30 MB to 19 GB, and a FIFO hung the
//! routes watcher and `reveille check` in `open`. So a file is opened once, without blocking (`O_NONBLOCK`: a FIFO
//! without a writer opens at once instead of waiting for one), the opened handle's own metadata decides whether
//! it is read (no check-then-open race: a symlink swapped between the two cannot slip a device in), and at most
//! `limit + 1` bytes are read, more being refused. Symlinks are followed: one to a regular file is fine.
//!
//! Refusals are `std::io::Error`s whose message says what was wrong (`not a regular file but a FIFO...`,
//! `larger than N bytes...`), so each caller reports them as it reports any read error, with the path. It owns
//! no watching (`fswatch`) and no parsing.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// The largest file read unless configured otherwise (`max_file_size`): far above any sane routes file or
/// certificate, far below what would hurt the process.
pub(crate) const DEFAULT_MAX_SIZE: u64 = 64 * 1024 * 1024;

/// Why a file that opened is not read.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("not a regular file but {0}: reveille reads only regular files (or symlinks to one)")]
    NotRegular(&'static str),
    #[error("larger than {limit} bytes, the limit on the files reveille reads (`max_file_size`)")]
    TooLarge { limit: u64 },
}

/// What a file that is not a regular one is, for the message.
fn describe(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "something else"
    }
}

/// Opens `path` for reading if it is (or links to) a regular file, without blocking on a FIFO or a device.
pub(crate) fn open(path: &Path) -> io::Result<(File, Metadata)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOCTTY: a terminal device must not become the process's controlling terminal by being opened.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = match options.open(path) {
        Ok(f) => f,
        // A Unix socket cannot be opened (ENXIO, "No such device or address"): say what it is instead.
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => {
                    io::Error::new(io::ErrorKind::InvalidInput, Refused::NotRegular(describe(&meta)))
                }
                _ => e,
            });
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, Refused::NotRegular(describe(&meta))));
    }
    Ok((file, meta))
}

/// Reads a regular file (or one a symlink points to) whole, refusing one larger than `limit` bytes.
pub(crate) fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let too_large = || io::Error::new(io::ErrorKind::InvalidData, Refused::TooLarge { limit });
    let (file, meta) = open(path)?;
    if meta.len() > limit {
        return Err(too_large());
    }
    // The size can lie (a file growing while read, or one of procfs saying 0): the `take` is the bound.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read`], for a file that must be UTF-8 text.
pub(crate) fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text: {}", e.utf8_error())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_within_the_limit_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_to_string(&file, 10).unwrap(), "0123456789");
        let e = read(&file, 9).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 9 bytes"), "{e}");

        // A symlink to a regular file is followed.
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link, 100).unwrap(), b"0123456789");

        // A device behind a symlink, a directory, a FIFO (which would block an ordinary open), a socket.
        let zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.path().join("fifo.toml");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let socket = dir.path().join("socket.toml");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        for (path, what) in [
            (&zero, "a character device"),
            (&dir.path().to_path_buf(), "a directory"),
            (&fifo, "a FIFO"),
            (&socket, "a socket"),
        ] {
            let e = read(path, DEFAULT_MAX_SIZE).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{}: {e}", path.display());
            assert!(e.to_string().contains(&format!("not a regular file but {what}")), "{}: {e}", path.display());
        }

        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(read_to_string(&file, 10).unwrap_err().to_string().contains("not UTF-8"));
        assert_eq!(read(&dir.path().join("nope"), 10).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
