//! skyscore: score supervised fine-tuning data with Skywork-Reward-V2 reward models.
//!
//! Layers, bottom up: [`hub`] and [`checkpoint`] find and check a model's files;
//! [`template`] and [`encode`] turn SFT rows into token ids; [`models`] holds one candle
//! forward per architecture; [`batching`] and [`engine`] run rows through the model;
//! [`io`], [`config`] and [`cli`] are the application around it.

pub mod batching;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod encode;
pub mod engine;
pub mod hub;
pub mod io;
pub mod models;
pub mod template;

pub use engine::{DeviceSpec, Engine, EngineOptions};
