//! skyscore's engine: from a checkpoint and conversations to reward scores.
//!
//! Layers, bottom up: [`hub`] and [`checkpoint`] find and check a model's files; [`template`]
//! and [`encode`] turn conversations into token ids; [`models`] holds one candle forward per
//! architecture, with every CPU kernel and every `cfg(target_arch)` in `models::cpu`;
//! [`device`] opens devices; [`batching`] cuts rows into device batches; [`store`] is the
//! persistent score store; [`engine`] ties them together: loading, a runner (token batches in,
//! logits out) and a memo (duplicates, store lookups and commits).
//!
//! It must not depend on DataFusion, Ballista, Arrow or sqlparser (the app and the UDF crate
//! bring those): the parity tests and the kernel bench build without them, and so does the
//! Python package. A test in the app checks this rule with `cargo metadata`.

pub mod batching;
pub mod checkpoint;
pub mod device;
pub mod encode;
pub mod engine;
pub mod hub;
pub mod models;
pub mod store;
pub mod template;

pub use device::{DeviceList, DeviceSpec};
pub use engine::{ConversationChunk, Engine, EngineError, EngineOptions};
pub use models::{Dtype, DtypeChoice};
