//! Loopback addresses for one test: distinct `127.a.b.c` addresses, and a
//! free-port helper for the rare places that need a port before start.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use sha2::{Digest, Sha256};

/// Hands out distinct addresses `127.a.b.c` for one test.
///
/// `a.b` is derived from the seed and the test name, so concurrent tests in
/// one process rarely share a `/24` and a rerun with the same seed gets the
/// same addresses; `c` counts up from 1 (at most 254 addresses). On Linux
/// every address in `127.0.0.0/8` is bound to `lo` with no configuration.
/// `127.0.x.x` is never used, to stay clear of `127.0.0.1` services.
#[derive(Debug)]
pub struct LoopbackAllocator {
    a: u8,
    b: u8,
    next: AtomicU32,
}

impl LoopbackAllocator {
    /// The allocator for test `test_name` run with seed `seed`.
    pub fn new(seed: u64, test_name: &str) -> LoopbackAllocator {
        let mut hasher = Sha256::new();
        hasher.update(seed.to_le_bytes());
        hasher.update(test_name.as_bytes());
        let digest = hasher.finalize();
        LoopbackAllocator {
            a: 1 + digest[0] % 254,
            b: digest[1],
            next: AtomicU32::new(1),
        }
    }

    /// The next unused address. Panics after 254 addresses.
    pub fn next_ip(&self) -> IpAddr {
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        let c = u8::try_from(c)
            .ok()
            .filter(|c| *c <= 254)
            .unwrap_or_else(|| panic!("LoopbackAllocator: more than 254 addresses in one test"));
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, c))
    }

    /// `127.a.b.0/24`, the block this allocator hands addresses from.
    pub fn block(&self) -> String {
        format!("127.{}.{}.0/24", self.a, self.b)
    }
}

/// A TCP port that was free on `ip` a moment ago: binds port 0, reads the
/// port, releases it. Racy by nature (another process may take it); prefer
/// binding port 0 and reporting the port (ready files) wherever possible.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind {ip}:0 to find a free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: addresses are distinct, inside 127.0.0.0/8, never 127.0.x.x.
    #[test]
    fn distinct_loopback_addresses() {
        let alloc = LoopbackAllocator::new(1, "t");
        let ips: Vec<IpAddr> = (0..254).map(|_| alloc.next_ip()).collect();
        let mut sorted = ips.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ips.len());
        for ip in ips {
            let IpAddr::V4(v4) = ip else {
                panic!("{ip} is not IPv4")
            };
            assert!(v4.is_loopback(), "{v4}");
            assert_ne!(v4.octets()[1], 0, "{v4}");
        }
    }

    // Property: the same seed and test name give the same block.
    #[test]
    fn deterministic_block() {
        assert_eq!(
            LoopbackAllocator::new(5, "x").block(),
            LoopbackAllocator::new(5, "x").block()
        );
    }
}
