//! What the soak run samples from the operating system and from Redis: this process's resident
//! memory, open file descriptors, sockets and established TCP connections (all from `/proc`), and
//! fields of a Redis `INFO` reply. The parsers are pure functions of the text, tested below.

use std::collections::HashSet;

/// One look at this process, from `/proc/self`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ProcessProbe {
    /// `VmRSS`: resident memory, KiB.
    pub(crate) rss_kib: u64,
    /// `RssAnon`: the anonymous part of it (heap, stacks), KiB.
    pub(crate) rss_anon_kib: u64,
    /// OS threads.
    pub(crate) threads: u64,
    /// Open file descriptors (the one that lists them included, the same in every sample).
    pub(crate) fds: u64,
    /// Descriptors that are sockets.
    pub(crate) sockets: u64,
    /// Of those, TCP connections in state ESTABLISHED.
    pub(crate) tcp_established: u64,
}

/// Looks at this process now (Linux only).
pub(crate) fn probe() -> Result<ProcessProbe, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let field = |name: &str| {
        status_field(&status, name).ok_or_else(|| format!("no {name} in /proc/self/status"))
    };
    let (rss_kib, rss_anon_kib, threads) = (field("VmRSS")?, field("RssAnon")?, field("Threads")?);
    let mut fds = 0u64;
    let mut inodes = HashSet::new();
    let dir = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot list /proc/self/fd: {e}"))?;
    for entry in dir.flatten() {
        fds += 1;
        // A descriptor closed between the listing and here has no link any more: skip it.
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = socket_inode(&target.to_string_lossy())
        {
            inodes.insert(inode);
        }
    }
    let tcp_established = ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| established_among(&table, &inodes))
        .sum();
    Ok(ProcessProbe {
        rss_kib,
        rss_anon_kib,
        threads,
        fds,
        sockets: inodes.len() as u64,
        tcp_established,
    })
}

/// The number of a `/proc/self/status` line such as `VmRSS:\t  12345 kB`.
pub(crate) fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        if key != name {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The inode of a descriptor's link target `socket:[12345]`.
pub(crate) fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Rows of a `/proc/net/tcp` table in state `01` (ESTABLISHED) whose inode is in `inodes`.
/// The table lists the whole network namespace (the `redis-server` side of each connection too),
/// so the inode match keeps this process's ends only.
pub(crate) fn established_among(table: &str, inodes: &HashSet<u64>) -> u64 {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            cols.len() > 9
                && cols[3] == "01"
                && cols[9].parse().is_ok_and(|inode| inodes.contains(&inode))
        })
        .count() as u64
}

/// A numeric field of an `INFO` reply (`connected_clients:3`).
pub(crate) fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim_end().split_once(':')?;
        (key == name).then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let status = "Name:\tcacheback-bench\nVmHWM:\t   30000 kB\nVmRSS:\t   24576 kB\n\
                      RssAnon:\t   20000 kB\nThreads:\t4\n";
        assert_eq!(status_field(status, "VmRSS"), Some(24_576));
        assert_eq!(status_field(status, "RssAnon"), Some(20_000));
        assert_eq!(status_field(status, "Threads"), Some(4));
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[test]
    fn socket_links_are_recognised() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("anon_inode:[eventpoll]"), None);
    }

    #[test]
    fn only_our_established_connections_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1A0B 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 100 1 0 100 0 0 10 0\n\
           1: 0100007F:C350 0100007F:1A0B 01 00000000:00000000 00:00000000 00000000  1000        0 200 1 0 20 4 30 10 -1\n\
           2: 0100007F:1A0B 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 300 1 0 20 4 30 10 -1\n\
           3: 0100007F:C351 0100007F:1A0B 06 00000000:00000000 03:00000000 00000000     0        0 400 1 0 20 4 30 10 -1\n";
        let ours: HashSet<u64> = [100, 200, 400].into_iter().collect();
        // 100 listens, 400 is in TIME_WAIT, 300 is the server's end: only 200 counts.
        assert_eq!(established_among(table, &ours), 1);
        assert_eq!(established_among(table, &HashSet::new()), 0);
    }

    #[test]
    fn info_fields_are_read() {
        let info = "$100\r\n# Clients\r\nconnected_clients:3\r\nblocked_clients:1\r\n\
                    used_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(info_field(info, "connected_clients"), Some(3));
        assert_eq!(info_field(info, "blocked_clients"), Some(1));
        assert_eq!(info_field(info, "used_memory"), Some(1_048_576));
        assert_eq!(info_field(info, "used_memory_human"), None);
        assert_eq!(info_field(info, "maxclients"), None);
    }
}
