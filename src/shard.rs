//! Sharding: which tenants this instance polls when N instances share them (`--shard I/N`,
//! `shard = "I/N"`, or `--shard-from-hostname N` for a StatefulSet pod `defender-bridge-I`).
//!
//! A tenant (its id, case-insensitive, and its API) belongs to the shard with the highest
//! rendezvous score (Thaler and Ravishankar's highest-random-weight hashing): every instance
//! computes the same owner from the configuration alone, with no coordination, and changing N
//! moves only the tenants whose highest score moves: about 1/N of them when a shard is added.
//! The score is the first 8 bytes of SHA-1 over `tenant|api|shard` (SHA-1 as a stable,
//! well-spread hash across versions and platforms, not for security).

use std::fmt;
use std::str::FromStr;

use sha1::{Digest, Sha1};

use crate::source::Api;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Most shards: far more instances than any MSSP runs, and a bound on the owner's search.
pub const MAX_SHARDS: u32 = 1024;

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "the shard count must be 1 to {MAX_SHARDS}, not {count}"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist: shards are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// The shard of a StatefulSet pod: the host name's trailing `-<ordinal>`.
    pub fn from_hostname(hostname: &str, count: u32) -> Result<Shard, String> {
        let short = hostname.split('.').next().unwrap_or(hostname);
        let ordinal = short
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .ok_or_else(|| {
                format!("host name {hostname:?} does not end in -<ordinal> (a StatefulSet pod's name, such as defender-bridge-0)")
            })?;
        Shard::new(ordinal, count)
    }

    /// The shard (of `count`) that owns the tenant's API.
    pub fn owner(tenant_id: &str, api: Api, count: u32) -> u32 {
        let tenant = tenant_id.trim().to_ascii_lowercase();
        (0..count.max(1))
            .max_by_key(|&j| score(&tenant, api, j))
            .unwrap_or(0)
    }

    /// Whether this shard polls the tenant's API.
    pub fn owns(&self, tenant_id: &str, api: Api) -> bool {
        Shard::owner(tenant_id, api, self.count) == self.index
    }
}

fn score(tenant: &str, api: Api, shard: u32) -> u64 {
    let mut h = Sha1::new();
    h.update(tenant.as_bytes());
    h.update(b"|");
    h.update(api.to_string().as_bytes());
    h.update(b"|");
    h.update(shard.to_string().as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `I/N` or `IofN` (the form systemd instance names can carry: `defender-bridge@0of3`).
impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad =
            || format!("shard {s:?}: write I/N or IofN, such as 0/3 (shards are numbered from 0)");
        let (i, n) = s
            .split_once('/')
            .or_else(|| s.split_once("of"))
            .ok_or_else(bad)?;
        let i: u32 = i.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Shard::new(i, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{:08x}-0000-4000-8000-{:012x}", i * 7919, i))
            .collect()
    }

    #[test]
    fn parses_and_checks_shards() {
        assert_eq!("0/3".parse(), Ok(Shard { index: 0, count: 3 }));
        assert_eq!("2of3".parse(), Ok(Shard { index: 2, count: 3 }));
        for (bad, says) in [
            ("3/3", "does not exist"),
            ("0/0", "1 to 1024"),
            ("x/3", "I/N"),
            ("1", "I/N"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            Shard::from_hostname("defender-bridge-2.defender-bridge.ns.svc", 3),
            Ok(Shard { index: 2, count: 3 })
        );
        assert!(Shard::from_hostname("defender-bridge-3", 3).is_err());
        assert!(Shard::from_hostname("collector", 3)
            .unwrap_err()
            .contains("-<ordinal>"));
    }

    /// Every tenant has exactly one owner, the shards are about even, ids are
    /// case-insensitive, and going from 3 to 4 shards moves about a quarter of the tenants,
    /// each to the new shard.
    #[test]
    fn rendezvous_spreads_and_moves_little() {
        let ts = tenants(3000);
        let mut per = [0usize; 3];
        for t in &ts {
            let owners: Vec<u32> = (0..3)
                .filter(|&i| Shard { index: i, count: 3 }.owns(t, Api::Graph))
                .collect();
            assert_eq!(owners.len(), 1);
            per[owners[0] as usize] += 1;
            assert_eq!(Shard::owner(&t.to_uppercase(), Api::Graph, 3), owners[0]);
        }
        assert!(per.iter().all(|&n| (850..=1150).contains(&n)), "{per:?}");
        let moved: Vec<&String> = ts
            .iter()
            .filter(|t| Shard::owner(t, Api::Graph, 3) != Shard::owner(t, Api::Graph, 4))
            .collect();
        assert!((600..=900).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|t| Shard::owner(t, Api::Graph, 4) == 3));
    }
}
