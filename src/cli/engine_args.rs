//! Model flags shared by `skyscore score` and `skyscore sql`, merged over the YAML config and
//! parsed into typed [`EngineOptions`] here, once.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::ScorerConfig;
use skyscore_engine::device::DeviceList;
use skyscore_engine::encode::TruncationSide;
use skyscore_engine::EngineOptions;

use crate::run::{DtypeChoice, ResolvedEngine};
use skyscore_engine::models::Dtype;

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Scorer config (YAML: name, model, max_length, batch_size, ...). Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Checkpoint directory, or hub id owner/name[@revision].
    /// [default: Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M]
    #[arg(long)]
    pub model: Option<String>,
    /// Longest prompt in tokens; longer rows are truncated, counted and flagged. [default: 4096]
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Which end of an over-long row to keep: right keeps the first tokens (as transformers
    /// does), left keeps the last. [default: right]
    #[arg(long, value_name = "right|left")]
    pub truncation_side: Option<TruncationSide>,
    /// Most rows per forward pass on CPU. On GPU, batches are sized by --max-batch-tokens
    /// alone. [default: 16]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Most padded tokens (rows × longest row) per forward pass: the GPU batch size knob.
    /// Lower it if the card runs out of memory. [default: 2048 on CPU, 65536 on GPU]
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Rows tokenized, length-sorted and scored together; the next chunk is tokenized while
    /// the model works on this one. Larger chunks pad less, smaller ones start sooner.
    /// [default: 1024 on CPU, 16384 on GPU]
    #[arg(long, visible_alias = "window")]
    pub chunk_rows: Option<usize>,
    /// cpu, cuda, cuda:N, or a list such as cuda:0,cuda:1 (one model replica per device,
    /// batches spread over them). [default: cuda:0 in a CUDA build when a GPU is visible, else cpu]
    #[arg(long)]
    pub device: Option<DeviceList>,
    /// Weight and compute dtype: auto, f32, f16 or bf16. On a CPU with AVX512-BF16, bf16 runs
    /// the linear layers through skyscore's bf16 kernel and the rest in f32 (about 2× f32's
    /// speed, scores within ~0.02 of f32); on other CPUs, bf16 runs bf16-rounded weights at
    /// f32's speed. auto takes bf16 on GPUs and AVX512-BF16 CPUs, f32 elsewhere, and the
    /// summary says which it took. [default: f32 on CPU, bf16 on CUDA]
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<DtypeChoice>,
    /// The persistent score store: every score is kept there, so a rerun (after a crash, a
    /// Ctrl-C, or of another query) runs the model only on rows it has never scored with this
    /// model. [default: $SKYSCORE_STORE, else ~/.cache/skyscore/scores.redb]
    #[arg(long, value_name = "FILE", conflicts_with = "no_store")]
    pub store: Option<PathBuf>,
    /// Neither read nor write the score store.
    #[arg(long)]
    pub no_store: bool,
    /// Memory one CPU forward pass may use, in GB: batches are cut to fit, and a row too long
    /// to fit alone is refused (or skipped with --skip-invalid) before anything is allocated.
    /// [default: 80% of the machine's memory]
    #[arg(long, value_name = "GB")]
    pub max_memory: Option<f64>,
}

impl EngineArgs {
    /// The store file this run uses, if any.
    pub fn store_path(&self) -> Option<PathBuf> {
        if self.no_store {
            return None;
        }
        self.store.clone().or_else(skyscore_engine::store::default_path)
    }

    pub fn resolve(&self) -> Result<ResolvedEngine> {
        let cfg = match &self.config {
            Some(path) => ScorerConfig::load(path)?,
            None => ScorerConfig::default(),
        };
        let devices = match (&self.device, &cfg.device) {
            (Some(list), _) | (None, Some(list)) => list.clone(),
            (None, None) => DeviceList::default_for_build(),
        };
        let choice = self.dtype.or(cfg.dtype).unwrap_or(DtypeChoice::Fixed(Dtype::default_for(devices.on_gpu())));
        let (dtype, dtype_reason) = choice.resolve(devices.on_gpu());
        Ok(ResolvedEngine {
            model: self.model.clone().unwrap_or(cfg.model),
            options: EngineOptions {
                max_length: self.max_length.unwrap_or(cfg.max_length),
                truncation_side: self.truncation_side.unwrap_or(cfg.truncation_side),
                batch_size: self.batch_size.unwrap_or(cfg.batch_size),
                max_batch_tokens: self.max_batch_tokens.or(cfg.max_batch_tokens),
                chunk_rows: self.chunk_rows,
                devices,
                dtype,
                store: self.store_path(),
                max_memory: self
                    .max_memory
                    .map(|gb| (gb * 1e9) as u64)
                    .or_else(skyscore_engine::engine::default_max_memory),
                stop: Some(crate::interrupt::stop_flag()),
                ..Default::default()
            },
            dtype_reason,
        })
    }
}
