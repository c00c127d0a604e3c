//! Named tensors and their file form: PyTorch's `state_dict`, stored as safetensors.
//!
//! A [`StateDict`] maps names (`fc1.weight`) to row-major f32 [`Tensor`]s and carries string
//! metadata beside them. [`StateDict::to_safetensors`] writes exactly what
//! `safetensors.torch.save_file` would (tensors sorted by name, f32 little-endian), with the
//! metadata sorted too, so that the same state always gives the same bytes: the `safetensors`
//! crate's own writer orders metadata by hash, which changes from process to process.
//! [`StateDict::from_safetensors`] reads with the `safetensors` crate, which checks the header
//! against the file's length before anything is allocated.

use std::collections::BTreeMap;
use std::io::{self, Write};

use safetensors::{Dtype, SafeTensors};

use crate::NnError;

/// A row-major f32 tensor: its shape, outermost first, and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` holding `data` in row-major order.
    ///
    /// # Panics
    /// If `data` does not have the shape's number of elements.
    #[track_caller]
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), shape.iter().product::<usize>(), "{} values do not fit {shape:?}", data.len());
        Self { shape, data }
    }

    /// The shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major, by value.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

/// A row-major i64 tensor, for the counters PyTorch keeps as integers (a batch
/// normalisation's `num_batches_tracked`, a 0-dimensional tensor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntTensor {
    shape: Vec<usize>,
    data: Vec<i64>,
}

impl IntTensor {
    /// A tensor of `shape` holding `data` in row-major order.
    ///
    /// # Panics
    /// If `data` does not have the shape's number of elements.
    #[track_caller]
    pub fn new(shape: Vec<usize>, data: Vec<i64>) -> Self {
        assert_eq!(data.len(), shape.iter().product::<usize>(), "{} values do not fit {shape:?}", data.len());
        Self { shape, data }
    }

    /// The shape, outermost first (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[i64] {
        &self.data
    }
}

/// Named tensors with string metadata: what `torch.save(model.state_dict())` saves, and what
/// an optimizer or a training run adds beside it under prefixes of their own.
///
/// ```
/// use nn::{StateDict, Tensor};
/// let mut state = StateDict::new();
/// state.insert("fc1.bias", Tensor::new(vec![2], vec![0.5, -1.0]));
/// state.set_meta("widths", "3,2");
/// let bytes = state.to_safetensors();
/// let back = StateDict::from_safetensors(&bytes).unwrap();
/// assert_eq!(back, state);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    tensors: BTreeMap<String, Tensor>,
    integers: BTreeMap<String, IntTensor>,
    metadata: BTreeMap<String, String>,
}

impl StateDict {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the tensor `name` (an integer tensor of that name included).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        self.integers.remove(&name);
        self.tensors.insert(name, tensor);
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Takes the tensor `name` out, if present.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Adds or replaces the integer tensor `name` (an f32 tensor of that name included).
    pub fn insert_i64(&mut self, name: impl Into<String>, tensor: IntTensor) {
        let name = name.into();
        self.tensors.remove(&name);
        self.integers.insert(name, tensor);
    }

    /// The integer tensor `name`, if present.
    pub fn get_i64(&self, name: &str) -> Option<&IntTensor> {
        self.integers.get(name)
    }

    /// Takes the integer tensor `name` out, if present.
    pub fn remove_i64(&mut self, name: &str) -> Option<IntTensor> {
        self.integers.remove(name)
    }

    /// The names of the tensors, f32 and integer, each kind sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().chain(self.integers.keys()).map(String::as_str)
    }

    /// The number of tensors, f32 and integer.
    pub fn len(&self) -> usize {
        self.tensors.len() + self.integers.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the metadata `key`.
    pub fn set_meta(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// The metadata `key`, if present.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The metadata `key`.
    ///
    /// # Errors
    /// [`NnError::MissingMetadata`] when it is absent.
    pub fn require_meta(&self, key: &str) -> Result<&str, NnError> {
        self.meta(key).ok_or_else(|| NnError::MissingMetadata { key: key.to_owned() })
    }

    /// The metadata `key` parsed as a `T`.
    ///
    /// # Errors
    /// [`NnError::MissingMetadata`] or [`NnError::BadMetadata`] naming the key, the value and
    /// `what` it should be.
    pub fn parse_meta<T: std::str::FromStr>(&self, key: &str, what: &'static str) -> Result<T, NnError> {
        let value = self.require_meta(key)?;
        value.parse().map_err(|_| NnError::BadMetadata { key: key.to_owned(), value: value.to_owned(), expected: what })
    }

    /// Removes all metadata, keeping the tensors.
    pub fn clear_metadata(&mut self) {
        self.metadata.clear();
    }

    /// All metadata, sorted by key.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &str)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Adds every tensor of `other` under `prefix` (`optimizer.` gives `optimizer.fc1.weight`),
    /// and its metadata as it is.
    pub fn extend_prefixed(&mut self, prefix: &str, other: StateDict) {
        for (name, tensor) in other.tensors {
            self.tensors.insert(format!("{prefix}{name}"), tensor);
        }
        for (name, tensor) in other.integers {
            self.integers.insert(format!("{prefix}{name}"), tensor);
        }
        self.metadata.extend(other.metadata);
    }

    /// Takes out the tensors whose names start with `prefix`, without it, with a copy of the
    /// metadata: the inverse of [`StateDict::extend_prefixed`].
    pub fn take_prefixed(&mut self, prefix: &str) -> StateDict {
        StateDict {
            tensors: take_prefixed(&mut self.tensors, prefix),
            integers: take_prefixed(&mut self.integers, prefix),
            metadata: self.metadata.clone(),
        }
    }

    /// The safetensors encoding: an 8-byte little-endian header length, a JSON header
    /// (metadata first, then the tensors by name), padded with spaces to 8 bytes, then the data.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_safetensors(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// [`StateDict::to_safetensors`] into any writer.
    ///
    /// # Errors
    /// The writer's.
    pub fn write_safetensors(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut header = format!("{{\"__metadata__\":{}", json(&self.metadata));
        let mut offset = 0;
        // The integers first: safetensors lays out tensors by alignment, the widest first.
        let entries = self.integers.iter().map(|(n, t)| (n, "I64", &t.shape, 8 * t.data.len()));
        for (name, dtype, shape, bytes) in
            entries.chain(self.tensors.iter().map(|(n, t)| (n, "F32", &t.shape, 4 * t.data.len())))
        {
            let end = offset + bytes;
            header += &format!(
                ",{}:{{\"dtype\":\"{dtype}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
                json(name),
                json(shape)
            );
            offset = end;
        }
        header.push('}');
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for tensor in self.integers.values() {
            w.write_all(&tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        }
        let mut buf = Vec::with_capacity(1 << 16);
        for tensor in self.tensors.values() {
            for chunk in tensor.data.chunks(1 << 14) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        Ok(())
    }

    /// Reads a safetensors file's bytes. Every tensor must be f32 or i64.
    ///
    /// # Errors
    /// [`NnError::NotSafetensors`] for bytes that are not a whole, valid file;
    /// [`NnError::WrongDtype`] for a tensor of another type.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, NnError> {
        let bad = |e: safetensors::SafeTensorError| NnError::NotSafetensors { reason: e.to_string() };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let file = SafeTensors::deserialize(bytes).map_err(bad)?;
        let (mut tensors, mut integers) = (BTreeMap::new(), BTreeMap::new());
        for (name, view) in file.tensors() {
            let shape = view.shape().to_vec();
            match view.dtype() {
                Dtype::F32 => {
                    let data =
                        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    tensors.insert(name, Tensor { shape, data });
                }
                Dtype::I64 => {
                    let data = view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .collect();
                    integers.insert(name, IntTensor { shape, data });
                }
                other => return Err(NnError::WrongDtype { name, dtype: format!("{other:?}"), expected: "F32 or I64" }),
            }
        }
        let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(Self { tensors, integers, metadata })
    }
}

/// Takes the entries of `map` whose names start with `prefix` out, without it.
fn take_prefixed<T>(map: &mut BTreeMap<String, T>, prefix: &str) -> BTreeMap<String, T> {
    let names: Vec<String> = map.keys().filter(|n| n.starts_with(prefix)).cloned().collect();
    names.into_iter().filter_map(|name| Some((name[prefix.len()..].to_owned(), map.remove(&name)?))).collect()
}

/// JSON text of a header's values: strings, shapes and the metadata map.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("strings, numbers and maps of strings serialize")
}

/// Names of parameters inside a model, built in one place: a scope per layer (`fc1`) and a
/// leaf per parameter (`fc1.weight`), as PyTorch's `state_dict` names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(String);

impl Scope {
    /// The scope `name` (a layer's name).
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The full name of this scope's parameter `leaf`.
    ///
    /// ```
    /// assert_eq!(nn::Scope::new("fc1").name("weight"), "fc1.weight");
    /// ```
    pub fn name(&self, leaf: &str) -> String {
        format!("{}.{leaf}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn sample() -> StateDict {
        let mut s = StateDict::new();
        s.insert("fc1.weight", Tensor::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-30, -0.0]));
        s.insert("fc1.bias", Tensor::new(vec![2], vec![0.25, 7.0]));
        s.set_meta("widths", "3,2");
        s.set_meta("format", "x");
        s
    }

    #[test]
    fn integer_counters_round_trip_as_i64_scalars() {
        let mut state = StateDict::new();
        state.insert("bn1.running_mean", Tensor::new(vec![2], vec![0.5, -0.25]));
        state.insert_i64("bn1.num_batches_tracked", IntTensor::new(vec![], vec![938]));
        let bytes = state.to_safetensors();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let counter = file.tensor("bn1.num_batches_tracked").unwrap();
        assert_eq!(
            (counter.dtype(), counter.shape(), counter.data()),
            (Dtype::I64, &[][..], &938i64.to_le_bytes()[..])
        );
        let back = StateDict::from_safetensors(&bytes).unwrap();
        assert_eq!(back, state);
        let mut nested = StateDict::new();
        nested.extend_prefixed("best.", back);
        assert_eq!(nested.len(), 2);
        assert_eq!(nested.take_prefixed("best.").get_i64("bn1.num_batches_tracked").unwrap().data(), &[938]);
        assert!(nested.is_empty());
    }

    #[test]
    fn the_encoding_is_the_safetensors_crates_own() {
        // One metadata entry: the crate's writer orders several by hash, differently each run.
        let mut s = sample();
        s.metadata.remove("format");
        let bytes: Vec<Vec<u8>> =
            s.tensors.values().map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let views: Vec<_> = s
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((n, t), b)| (n.as_str(), TensorView::new(Dtype::F32, t.shape.clone(), b).unwrap()))
            .collect();
        let theirs = safetensors::serialize(views, Some(s.metadata.clone().into_iter().collect())).unwrap();
        assert_eq!(s.to_safetensors(), theirs);
    }

    #[test]
    fn round_trips_and_prefixes_invert() {
        let s = sample();
        assert_eq!(StateDict::from_safetensors(&s.to_safetensors()).unwrap(), s);
        let mut all = StateDict::new();
        all.extend_prefixed("best.", s.clone());
        assert_eq!(all.names().collect::<Vec<_>>(), ["best.fc1.bias", "best.fc1.weight"]);
        let back = all.take_prefixed("best.");
        assert_eq!(back, s);
        assert!(all.is_empty());
    }

    #[test]
    fn damaged_bytes_and_other_dtypes_are_refused() {
        let bytes = sample().to_safetensors();
        let err = StateDict::from_safetensors(&bytes[..bytes.len() - 4]).unwrap_err();
        assert!(matches!(err, NnError::NotSafetensors { .. }), "{err}");
        assert!(StateDict::from_safetensors(b"not a file").is_err());
        let data = [0u8; 8];
        let view = TensorView::new(Dtype::F64, vec![1], &data).unwrap();
        let f64_file = safetensors::serialize([("x", view)], None).unwrap();
        assert_eq!(
            StateDict::from_safetensors(&f64_file).unwrap_err().to_string(),
            "tensor x is F64, expected F32 or I64"
        );
    }

    #[test]
    fn metadata_is_parsed_with_errors_naming_the_key() {
        let s = sample();
        assert_eq!(s.parse_meta::<String>("format", "text").unwrap(), "x");
        assert_eq!(
            s.parse_meta::<u32>("format", "a count").unwrap_err().to_string(),
            "metadata format \"x\" is not a count"
        );
        assert_eq!(s.require_meta("nope").unwrap_err().to_string(), "metadata nope is missing");
    }
}
