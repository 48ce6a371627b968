//! Several adapters over one base model, switched per generation without reloading the base.
//!
//! The base weights stay where they are; activating an adapter only points every `Linear`'s adapter
//! slot at that adapter's (A, B) tensors (reference-counted, no copy), or clears it.
//!
//! ```ignore
//! let mut registry = AdapterRegistry::default();
//! registry.load("pirate", Path::new("adapters/pirate"), &device)?;
//! registry.load("formal", Path::new("adapters/formal"), &device)?;
//! registry.activate(Some("pirate"), model.linear_layers_mut())?;   // generate as a pirate
//! registry.activate(None, model.linear_layers_mut())?;             // the plain base model
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::attach::{detach, Adapter};
use super::peft_io::load_adapter;
use crate::models::linear::Linear;
use crate::{Error, Result};

/// Named adapters for one base model, at most one active at a time.
#[derive(Debug, Default)]
pub struct AdapterRegistry {
    adapters: BTreeMap<String, (Adapter, PathBuf)>,
    active: Option<String>,
}

impl AdapterRegistry {
    /// Adds an adapter under `name` (replacing one of the same name). `origin` names it in errors.
    pub fn add(&mut self, name: &str, adapter: Adapter, origin: &Path) {
        self.adapters
            .insert(name.to_string(), (adapter, origin.to_path_buf()));
    }

    /// Loads a PEFT adapter directory under `name`.
    pub fn load(&mut self, name: &str, dir: &Path, device: &Device) -> Result<()> {
        let adapter = load_adapter(dir, device)?;
        self.add(name, adapter, dir);
        Ok(())
    }

    /// Removes an adapter; if it was active, the caller must activate another (or `None`) before the
    /// next generation, which `remove` enforces by returning the layers' slots to the base model.
    pub fn remove(
        &mut self,
        name: &str,
        model_layers: Vec<(String, &mut Linear)>,
    ) -> Result<Adapter> {
        let (adapter, _) = self
            .adapters
            .remove(name)
            .ok_or_else(|| self.unknown(name))?;
        if self.active.as_deref() == Some(name) {
            detach(model_layers);
            self.active = None;
        }
        Ok(adapter)
    }

    /// Makes `name` the adapter every layer uses (`None`: the base model alone). Checks the adapter
    /// against the model's layer shapes; on error the previous state is kept.
    pub fn activate(
        &mut self,
        name: Option<&str>,
        model_layers: Vec<(String, &mut Linear)>,
    ) -> Result<()> {
        match name {
            None => {
                detach(model_layers);
                self.active = None;
            }
            Some(n) => {
                let (adapter, origin) = self.adapters.get(n).ok_or_else(|| self.unknown(n))?;
                adapter.apply_for_inference(model_layers, origin)?;
                self.active = Some(n.to_string());
            }
        }
        Ok(())
    }

    /// The active adapter's name.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.adapters.keys().map(String::as_str).collect()
    }

    /// The adapter registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Adapter> {
        self.adapters.get(name).map(|(a, _)| a)
    }

    fn unknown(&self, name: &str) -> Error {
        Error::InvalidOption {
            option: "adapter".into(),
            reason: format!(
                "no adapter named `{name}` (registered: {})",
                self.names().join(", ")
            ),
        }
    }
}
