//! ONNX model: lossless I/O, typed tensor views and a graph index.
pub mod graph;
pub mod hollow;
pub mod io;
pub mod mapped;
pub mod presence;
pub mod promote;
pub mod qdq;
pub mod sparse;
pub mod tensor;
pub mod validate;
pub mod weight_inputs;
pub mod wire;
