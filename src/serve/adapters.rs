//! The adapters a server knows, and the ones it keeps in memory: at most `max_resident`, the least
//! recently used unpinned one evicted to make room. An evicted adapter stays known and is loaded
//! again from its directory when a request names it. Requests hold an `Arc` of the adapter they
//! run with, so unloading or evicting one never disturbs a sequence in flight: its memory is freed
//! when the last such sequence ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Device;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::lora::peft_io::load_adapter;
use crate::lora::ResidentAdapter;

/// Longest adapter name accepted.
const MAX_NAME: usize = 256;

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    pinned: bool,
    resident: Option<Arc<ResidentAdapter>>,
    /// Tick of the last use (LRU order).
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    tick: u64,
}

/// What `/v1/models` lists of an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    pub name: String,
    pub resident: bool,
    pub pinned: bool,
}

/// Known and resident adapters of one base model.
#[derive(Debug)]
pub struct AdapterSet {
    inner: Mutex<Inner>,
    /// The base model's projections (path, in, out): what every adapter is matched against.
    shapes: Vec<(String, usize, usize)>,
    /// Names a request cannot give an adapter (the base model's ids).
    reserved: Vec<String>,
    max_resident: usize,
    /// Largest rank accepted (the GPU adapter pool's), 0 for any.
    max_rank: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

impl AdapterSet {
    /// An empty set for a model with these projections.
    pub fn new(
        shapes: Vec<(String, usize, usize)>,
        reserved: Vec<String>,
        max_resident: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            shapes,
            reserved,
            max_resident: max_resident.max(1),
            max_rank: std::sync::atomic::AtomicUsize::new(0),
            metrics,
        }
    }

    /// Refuses adapters of rank above `rank` from now on (a GPU server's pool holds no more).
    pub fn set_max_rank(&self, rank: usize) {
        self.max_rank
            .store(rank, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is one insert).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the PEFT adapter in `path` under `name` and makes it resident. Errors: a taken or bad
    /// name, an unreadable adapter or one made for another base (400), no room (400).
    pub fn register(&self, name: &str, path: &Path, pinned: bool) -> Result<(), ApiError> {
        if name.is_empty() || name.len() > MAX_NAME || self.reserved.iter().any(|r| r == name) {
            return Err(ApiError::invalid(
                Some("lora_name"),
                format!(
                    "`{name}` cannot name an adapter (empty, too long, or the base model's id)"
                ),
            ));
        }
        if self.lock().entries.contains_key(name) {
            return Err(ApiError::invalid(
                Some("lora_name"),
                format!("an adapter named `{name}` is already loaded; unload it first"),
            ));
        }
        let adapter = self.load(name, path)?;
        let max_rank = self.max_rank.load(std::sync::atomic::Ordering::Relaxed);
        if max_rank > 0 && adapter.rank() > max_rank {
            return Err(ApiError::invalid(
                Some("lora_path"),
                format!(
                    "{}: rank {} is more than the server's GPU adapter pool holds ({max_rank}; \
                     restart with a larger --max-lora-rank)",
                    path.display(),
                    adapter.rank()
                ),
            ));
        }
        let mut inner = self.lock();
        if inner.entries.contains_key(name) {
            return Err(ApiError::invalid(
                Some("lora_name"),
                format!("an adapter named `{name}` was loaded meanwhile"),
            ));
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.entries.insert(
            name.to_string(),
            Entry {
                path: path.to_path_buf(),
                pinned,
                resident: Some(adapter),
                last_used: tick,
            },
        );
        self.make_room(&mut inner, name).inspect_err(|_| {
            inner.entries.remove(name);
        })?;
        self.update_gauge(&inner);
        Ok(())
    }

    /// Forgets an adapter (404 if unknown). Sequences running with it finish with it.
    pub fn unregister(&self, name: &str) -> Result<(), ApiError> {
        let mut inner = self.lock();
        if inner.entries.remove(name).is_none() {
            return Err(ApiError::not_found(
                "lora_name",
                format!("no adapter named `{name}` is loaded"),
            ));
        }
        self.update_gauge(&inner);
        Ok(())
    }

    /// The resident adapter `name`, loaded again from its directory if it was evicted. `None` when
    /// no adapter has that name.
    pub fn get(&self, name: &str) -> Result<Option<Arc<ResidentAdapter>>, ApiError> {
        let path = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            let Some(entry) = inner.entries.get_mut(name) else {
                return Ok(None);
            };
            entry.last_used = tick;
            if let Some(adapter) = &entry.resident {
                return Ok(Some(adapter.clone()));
            }
            entry.path.clone()
        };
        let adapter = self.load(name, &path)?;
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(name) else {
            return Ok(None);
        };
        if let Some(existing) = &entry.resident {
            // Another request reloaded it meanwhile: use that copy.
            return Ok(Some(existing.clone()));
        }
        entry.resident = Some(adapter.clone());
        self.make_room(&mut inner, name)?;
        self.update_gauge(&inner);
        Ok(Some(adapter))
    }

    /// Every known adapter, by name.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.lock()
            .entries
            .iter()
            .map(|(name, e)| AdapterInfo {
                name: name.clone(),
                resident: e.resident.is_some(),
                pinned: e.pinned,
            })
            .collect()
    }

    fn load(&self, name: &str, path: &Path) -> Result<Arc<ResidentAdapter>, ApiError> {
        let adapter = load_adapter(path, &Device::Cpu)
            .and_then(|a| ResidentAdapter::new(name, &a, &self.shapes, path))
            .map_err(|e| {
                ApiError::invalid(
                    Some("lora_path"),
                    format!("adapter `{name}` from {}: {e}", path.display()),
                )
            })?;
        self.metrics.adapter_loads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(adapter = name, path = %path.display(), modules = adapter.modules(), rank = adapter.rank(), "adapter loaded");
        Ok(Arc::new(adapter))
    }

    /// Evicts least recently used unpinned adapters (never `keep`) until at most `max_resident`
    /// are resident.
    fn make_room(&self, inner: &mut Inner, keep: &str) -> Result<(), ApiError> {
        loop {
            let resident = inner
                .entries
                .values()
                .filter(|e| e.resident.is_some())
                .count();
            if resident <= self.max_resident {
                return Ok(());
            }
            let victim = inner
                .entries
                .iter()
                .filter(|(n, e)| e.resident.is_some() && !e.pinned && n.as_str() != keep)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(n, _)| n.clone());
            let Some(victim) = victim else {
                if let Some(entry) = inner.entries.get_mut(keep) {
                    entry.resident = None;
                }
                return Err(ApiError::invalid(
                    Some("model"),
                    format!(
                        "cannot make `{keep}` resident: the {} resident adapters (--max-adapters) are pinned",
                        self.max_resident
                    ),
                ));
            };
            if let Some(entry) = inner.entries.get_mut(&victim) {
                entry.resident = None;
            }
            self.metrics
                .adapter_evictions
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(adapter = %victim, "adapter evicted (least recently used)");
        }
    }

    fn update_gauge(&self, inner: &Inner) {
        let resident = inner
            .entries
            .values()
            .filter(|e| e.resident.is_some())
            .count();
        self.metrics
            .adapters_resident
            .store(resident as i64, Ordering::Relaxed);
    }
}
