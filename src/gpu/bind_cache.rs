//! Bind groups kept across steps while the buffer pool is on: keyed by the pipeline (whose bind
//! group layout it is), the parameter block's buffer id, offset and size, and the ids of the bound
//! storage buffers. Pooled buffers keep their id across owners, so a step that takes the same
//! buffers as the one before (the pool hands out the lowest free id of a size) binds them with
//! the same groups.
//! Entries that bind a buffer the pool dropped are evicted ([`BindGroupCache::evict`]); beyond
//! [`MAX_ENTRIES`] the least recently used half goes.

use std::collections::HashMap;
use std::sync::Mutex;

/// The most bind groups kept (a BERT-large step with streamed layers binds a few thousand).
pub const MAX_ENTRIES: usize = 16_384;

/// `[pipeline, params buffer id, params offset, params size, storage buffer ids...]`.
pub(crate) type BindKey = Vec<u64>;

struct Entry {
    group: wgpu::BindGroup,
    last_use: u64,
}

#[derive(Default)]
struct State {
    map: HashMap<BindKey, Entry>,
    uses: u64,
}

#[derive(Default)]
pub(crate) struct BindGroupCache {
    state: Mutex<State>,
}

impl BindGroupCache {
    /// The cached group of `key`, or the one `create` makes.
    pub(crate) fn get_or_create(&self, key: BindKey, create: impl FnOnce() -> wgpu::BindGroup) -> wgpu::BindGroup {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.uses += 1;
        let now = s.uses;
        if let Some(e) = s.map.get_mut(&key) {
            e.last_use = now;
            return e.group.clone();
        }
        if s.map.len() >= MAX_ENTRIES {
            let mut uses: Vec<u64> = s.map.values().map(|e| e.last_use).collect();
            uses.sort_unstable();
            let median = uses[uses.len() / 2];
            s.map.retain(|_, e| e.last_use > median);
        }
        let group = create();
        s.map.insert(key, Entry { group: group.clone(), last_use: now });
        group
    }

    /// Drops the groups that bind any of `ids` (buffers the pool dropped).
    pub(crate) fn evict(&self, ids: &[u64]) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.map.retain(|k, _| !k[1..2].iter().chain(&k[4..]).any(|id| ids.contains(id)));
    }

    pub(crate) fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }
}
