//! The data volume's size and free space (statvfs of the data directory).

use std::path::Path;

/// Bytes: size, used, free for unprivileged users (what PostgreSQL may still write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Volume {
    pub size: u64,
    pub used: u64,
    pub free: u64,
}

pub fn of(path: &Path) -> std::io::Result<Volume> {
    let stat = rustix::fs::statvfs(path)?;
    let block = stat.f_frsize;
    let size = stat.f_blocks.saturating_mul(block);
    Ok(Volume {
        size,
        used: size.saturating_sub(stat.f_bfree.saturating_mul(block)),
        free: stat.f_bavail.saturating_mul(block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_of_a_directory_is_read_and_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let volume = of(dir.path()).unwrap();
        assert!(volume.size > 0);
        assert!(volume.used <= volume.size);
        assert!(volume.free <= volume.size - volume.used);
        assert!(of(&dir.path().join("missing")).is_err());
    }
}
