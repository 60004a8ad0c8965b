//! Safetensors files through MLX's own reader and writer. Loading is lazy:
//! tensor data is read from disk when an array is first evaluated.

use std::collections::HashMap;
use std::path::Path;

use super::array::{array_list, arrays_from_list};
use super::ffi::bridge as ffi;
use super::{Array, Error, Result};

/// The tensors and the `__metadata__` strings of one file.
#[derive(Debug, Default)]
pub struct SafetensorsFile {
    pub tensors: HashMap<String, Array>,
    pub metadata: HashMap<String, String>,
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| Error::File {
        path: path.to_path_buf(),
        message: "the path is not valid UTF-8".into(),
    })
}

fn file_error(path: &Path, action: &str, e: cxx::Exception) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: format!("{action} safetensors failed: {}", e.what()),
    }
}

pub fn load(path: &Path) -> Result<SafetensorsFile> {
    let mut names = Vec::new();
    let mut list = ffi::new_array_list();
    let mut keys = Vec::new();
    let mut values = Vec::new();
    ffi::load_safetensors(
        path_str(path)?,
        &mut names,
        list.pin_mut(),
        &mut keys,
        &mut values,
    )
    .map_err(|e| file_error(path, "reading", e))?;
    Ok(SafetensorsFile {
        tensors: names.into_iter().zip(arrays_from_list(&list)).collect(),
        metadata: keys.into_iter().zip(values).collect(),
    })
}

pub fn save(path: &Path, tensors: &HashMap<String, Array>, metadata: &HashMap<String, String>) -> Result<()> {
    let (names, arrays): (Vec<String>, Vec<&Array>) = tensors.iter().map(|(n, a)| (n.clone(), a)).unzip();
    let (keys, values): (Vec<String>, Vec<String>) =
        metadata.iter().map(|(k, v)| (k.clone(), v.clone())).unzip();
    ffi::save_safetensors(path_str(path)?, &names, &array_list(arrays), &keys, &values)
        .map_err(|e| file_error(path, "writing", e))
}
