//! skyscore: score supervised fine-tuning data with Skywork-Reward-V2 reward models.
//!
//! Layers, bottom up: `skyscore-core` is the contract (conversations, the `Scorer` trait,
//! per-row results, stats); [`hub`] and [`checkpoint`] find and check a model's files;
//! [`template`] and [`encode`] turn conversations into token ids; [`models`] holds one candle
//! forward per architecture; [`device`] opens devices; [`batching`] and [`engine`] run chunks
//! of conversations through the model; [`tables`], [`io`], [`session`], [`cluster`] (Ballista
//! scheduler, executor and client sessions), [`config`] and [`cli`] are the application around it.

pub mod batching;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod device;
pub mod encode;
pub mod engine;
pub mod hub;
pub mod interrupt;
pub mod io;
pub mod models;
pub mod plot;
pub mod session;
pub mod store;
pub mod tables;
pub mod template;

pub use device::{DeviceList, DeviceSpec};
pub use engine::{ConversationChunk, Engine, EngineOptions};
pub use models::Dtype;
