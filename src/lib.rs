//! skyscore, the application: score supervised fine-tuning data with Skywork-Reward-V2 reward
//! models from the command line or inside SQL.
//!
//! The crates below it, by layer: `skyscore-core` is the contract (conversations, the `Scorer`
//! trait, per-row results, stats, model facts); `skyscore-engine` loads checkpoints and runs the
//! models; `skyscore-udf` is the DataFusion side (UDFs, batching service, cache, plan rules).
//! This crate adds what a user runs: [`cli`] (the commands), [`run`] (what every job shares:
//! the resolved engine, the scorer loader, the summary), [`sql`] (sessions and atomic outputs),
//! [`cluster`] (Ballista scheduler, executor and client sessions), [`io`] (file formats, inputs
//! and outputs), [`config`] (the YAML scorer spec), [`plot`] and [`interrupt`] (Ctrl-C).
//! It is the only crate that may depend on Ballista and datafusion-cli.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod interrupt;
pub mod io;
pub mod plot;
pub mod run;
pub mod sql;
