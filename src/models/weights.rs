//! Memory-mapped safetensors weights behind candle-nn's `VarBuilder`, with errors that name the
//! file and the tensor. A component's weights may be one file or several shards; tensors stored
//! as f32, f16 or bf16 are converted to the compute dtype on load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range inside the file's mmap.
    start: usize,
    end: usize,
}

struct MappedFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

impl MappedFile {
    /// Takes the pages of bytes `start..end`, already copied out, off this process's resident
    /// memory (they stay in the page cache and come back if read again). Without it every weight
    /// read stays resident until the whole component is built: the f32 file on top of the packed
    /// copy the layers keep, which for bf16 products is more than the packed weights themselves.
    fn release(&self, start: usize, end: usize) {
        #[cfg(unix)]
        // SAFETY: a read-only shared file mapping: dropping its pages loses nothing (the next
        // read faults them in from the file again), and nothing borrows these bytes any more.
        unsafe {
            // A hint: a refusal changes only the memory held.
            let _ = self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start);
        }
        #[cfg(not(unix))]
        let _ = (start, end);
    }
}

/// A set of safetensors files seen as one name -> tensor map.
pub struct Weights {
    files: Vec<MappedFile>,
    entries: HashMap<String, Entry>,
    /// Prefix stripped from stored names when the model asks for an unprefixed name (e.g.
    /// `text_model.` in CLIP checkpoints saved from `CLIPTextModel`).
    alias_prefixes: Vec<String>,
}

impl Weights {
    /// Memory-maps and indexes the files. A file that is not valid safetensors (truncated,
    /// corrupt header, offsets past its end) is an error naming it.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (file_index, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the mapping is read-only; a concurrent writer to a model file would break
            // any loader, ours or PyTorch's.
            let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, metadata) =
                safetensors::SafeTensors::read_metadata(&mmap[..]).map_err(|e| invalid_file(path, &mmap, e))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let dtype = match info.dtype {
                    safetensors::Dtype::F32 => DType::F32,
                    safetensors::Dtype::F16 => DType::F16,
                    safetensors::Dtype::BF16 => DType::BF16,
                    safetensors::Dtype::F64 => DType::F64,
                    safetensors::Dtype::I64 => DType::I64,
                    safetensors::Dtype::U8 => DType::U8,
                    safetensors::Dtype::U32 => DType::U32,
                    other => {
                        return Err(Error::weights(
                            path,
                            format!("tensor `{name}`: unsupported dtype {other:?} (f32, f16 or bf16 expected)"),
                        ))
                    }
                };
                let (start, end) = info.data_offsets;
                let (start, end) = (data_start + start, data_start + end);
                let expected = info.shape.iter().product::<usize>() * dtype.size_in_bytes();
                if end > mmap.len() || end - start != expected {
                    return Err(Error::weights(
                        path,
                        format!("tensor `{name}`: data out of bounds (file truncated or corrupt)"),
                    ));
                }
                entries.insert(name, Entry { file: file_index, dtype, shape: info.shape.clone(), start, end });
            }
            files.push(MappedFile { path: path.clone(), mmap });
        }
        Ok(Self { files, entries, alias_prefixes: Vec::new() })
    }

    /// Also answer a request for `name` with a stored `prefix + name`.
    pub fn with_alias_prefix(mut self, prefix: &str) -> Self {
        self.alias_prefixes.push(prefix.to_string());
        self
    }

    /// The files, for messages.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    fn describe_files(&self) -> String {
        match self.files.as_slice() {
            [one] => one.path.display().to_string(),
            many => many.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", "),
        }
    }

    fn lookup(&self, name: &str) -> Option<&Entry> {
        self.entries
            .get(name)
            .or_else(|| self.alias_prefixes.iter().find_map(|p| self.entries.get(&format!("{p}{name}"))))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// The stored shape of `name`, if it is there (under its own name or an alias).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.lookup(name).map(|e| e.shape.as_slice())
    }

    /// Names of all stored tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// Loads `name` as stored, converted to `dtype` on `device`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.lookup(name).ok_or_else(|| self.missing(name))?;
        let file = &self.files[entry.file];
        let bytes = &file.mmap[entry.start..entry.end];
        let tensor = Tensor::from_raw_buffer(bytes, entry.dtype, &entry.shape, &Device::Cpu)?;
        file.release(entry.start, entry.end);
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }

    fn missing(&self, name: &str) -> Error {
        let shown = self.describe_files();
        let path = if self.files.len() == 1 { self.files[0].path.clone() } else { PathBuf::from(shown) };
        Error::weights(path, format!("missing weight `{name}`"))
    }

    /// Loads `name` and checks its shape.
    pub fn load_shaped(&self, name: &str, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.lookup(name).ok_or_else(|| self.missing(name))?;
        if entry.shape.as_slice() != shape.dims() {
            return Err(Error::weights(
                &self.files[entry.file].path,
                format!("weight `{name}` has shape {:?}, the config implies {:?}", entry.shape, shape.dims()),
            ));
        }
        self.load(name, dtype, device)
    }

    /// A candle-nn `VarBuilder` over these weights. Its errors keep our messages.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(self.clone())), dtype, device.clone())
    }
}

/// Says what is wrong with a file safetensors refuses, in the terms of the usual causes.
fn invalid_file(path: &Path, bytes: &[u8], err: safetensors::SafeTensorError) -> Error {
    use safetensors::SafeTensorError as E;
    // A repo cloned without git-lfs leaves small text pointers in place of the weights.
    if bytes.starts_with(b"version https://git-lfs") {
        return Error::weights(
            path,
            "is a Git LFS pointer, not the weights (run `git lfs pull` in the model folder, or download it again)",
        );
    }
    let why = match err {
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            format!("file too short for its header ({} bytes; truncated?)", bytes.len())
        }
        E::MetadataIncompleteBuffer => {
            "its size does not match the tensors its header lists (truncated or incomplete download?)".to_string()
        }
        other => other.to_string(),
    };
    Error::weights(path, format!("not a valid safetensors file: {why}"))
}

struct Backend(Arc<Weights>);

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.load_shaped(name, &s, dtype, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load(name, dtype, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}
