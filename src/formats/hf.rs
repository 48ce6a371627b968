//! Hugging Face model directories: `config.json`, `model.safetensors` or shards listed in
//! `model.safetensors.index.json` (memory-mapped), converted to the requested dtype and device on load.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::DType;

use crate::formats::config::read_json;
use crate::formats::weights::{LoadOptions, Weight, WeightSource};
use crate::{Context, Error, Result};

/// The safetensors files of an HF directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json` (each listed once, in name order).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            reason: "no model.safetensors or model.safetensors.index.json in the directory".into(),
        });
    }
    let json = read_json(&index)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            path: index.clone(),
            reason: "missing required field `weight_map`".into(),
        })?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        let file = dir.join(shard);
        if !file.is_file() {
            return Err(Error::Format {
                path: index.clone(),
                reason: format!("lists shard `{shard}`, which is missing"),
            });
        }
        files.push(file);
    }
    Ok(files)
}

/// The tensors of an HF directory (one or several memory-mapped safetensors files).
pub struct SafetensorsSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    tensors: MmapedSafetensors,
    /// name -> shape
    shapes: HashMap<String, Vec<usize>>,
    /// name -> stored dtype (`BF16`, `F32`, ...)
    dtypes: HashMap<String, String>,
    options: LoadOptions,
}

impl SafetensorsSource {
    /// Opens the safetensors of `dir` (see [`safetensors_files`]). Headers are checked here: a file
    /// shorter than its header promises fails with the file named.
    pub fn open(dir: &Path, options: LoadOptions) -> Result<Self> {
        let files = safetensors_files(dir)?;
        Self::open_files(dir, files, options)
    }

    /// Opens explicit safetensors files; `dir` names the model in errors.
    pub fn open_files(dir: &Path, files: Vec<PathBuf>, options: LoadOptions) -> Result<Self> {
        // SAFETY: read-only maps of model files wick does not modify while they are open.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::Format {
            path: files.first().cloned().unwrap_or_else(|| dir.to_path_buf()),
            reason: format!("invalid safetensors: {e}"),
        })?;
        let mut shapes = HashMap::new();
        let mut dtypes = HashMap::new();
        for (name, view) in tensors.tensors() {
            dtypes.insert(name.clone(), format!("{:?}", view.dtype()));
            shapes.insert(name, view.shape().to_vec());
        }
        tracing::debug!(dir = %dir.display(), files = files.len(), "opened safetensors");
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            tensors,
            shapes,
            dtypes,
            options,
        })
    }

    /// The safetensors files behind this source.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The stored dtype of a tensor as safetensors names it (`BF16`, `F32`, ...).
    pub fn stored_dtype(&self, name: &str) -> Option<&str> {
        self.dtypes.get(name).map(String::as_str)
    }
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// A dense tensor in `options.dtype` (f32 when `None`) on `options.device`.
    fn get(&self, name: &str) -> Result<Weight> {
        if !self.contains(name) {
            return Err(Error::Format {
                path: self.dir.clone(),
                reason: format!("no tensor `{name}` in the safetensors files"),
            });
        }
        let what = || format!("{}: loading tensor `{name}`", self.dir.display());
        let t = self
            .tensors
            .load(name, &self.options.device)
            .context(what())?;
        let dtype = self.options.dtype.unwrap_or(DType::F32);
        let t = if t.dtype() == dtype {
            t
        } else {
            t.to_dtype(dtype).context(what())?
        };
        Ok(Weight::Dense(t))
    }

    /// The tensor in its stored dtype on the CPU.
    fn get_stored(&self, name: &str) -> Result<Weight> {
        if !self.contains(name) {
            return self.get(name);
        }
        let t = self
            .tensors
            .load(name, &candle_core::Device::Cpu)
            .context(format!("{}: loading tensor `{name}`", self.dir.display()))?;
        Ok(Weight::Dense(t))
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shapes.keys().cloned().collect();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }

    fn stored_type(&self, name: &str) -> Option<String> {
        self.stored_dtype(name).map(str::to_string)
    }
}
