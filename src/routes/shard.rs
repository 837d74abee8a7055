//! A hash map split into shards that are shared between snapshots: changing a few keys of a million-entry
//! table copies only the shards those keys live in, so an etcd event applies in microseconds whatever the
//! table size, while readers keep an immutable snapshot.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

type FastMap<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Seed of the shard-picking hash: fixed, so it does not depend on the process (shards are only a layout).
const SHARD_SEED: u64 = 0x05ee_d0f7_ab1e;

#[derive(Clone, Debug)]
pub(crate) struct ShardMap<V> {
    shards: Box<[Arc<FastMap<V>>]>,
    len: usize,
}

impl<V: Clone> ShardMap<V> {
    /// A map sized for about `expected` entries: shards of a few hundred entries each.
    pub(crate) fn with_expected(expected: usize) -> Self {
        let n = (expected / 256).clamp(16, 8192).next_power_of_two();
        Self { shards: (0..n).map(|_| Arc::new(FastMap::default())).collect(), len: 0 }
    }

    #[inline]
    fn shard_of(&self, key: &str) -> usize {
        let h = foldhash::fast::FixedState::with_seed(SHARD_SEED).hash_one(key);
        (h as usize) & (self.shards.len() - 1)
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        self.shards[self.shard_of(key)].get(key)
    }

    /// Inserts, copying the shard first if another snapshot shares it.
    pub(crate) fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        let i = self.shard_of(&key);
        let old = Arc::make_mut(&mut self.shards[i]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[i]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_on_write_leaves_the_old_snapshot_alone() {
        let mut a = ShardMap::with_expected(10_000);
        for i in 0..10_000 {
            a.insert(Arc::from(format!("k{i}")), i);
        }
        let mut b = a.clone();
        b.insert(Arc::from("k1"), -1);
        b.remove("k2");
        b.insert(Arc::from("new"), 7);
        assert_eq!((a.get("k1"), a.get("k2"), a.get("new"), a.len()), (Some(&1), Some(&2), None, 10_000));
        assert_eq!((b.get("k1"), b.get("k2"), b.get("new"), b.len()), (Some(&-1), None, Some(&7), 10_000));
        // Only the touched shards were copied.
        let shared = a.shards.iter().zip(b.shards.iter()).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert!(shared >= a.shards.len() - 3, "{shared} of {} shards shared", a.shards.len());
        assert_eq!(b.iter().count(), 10_000);
    }
}
