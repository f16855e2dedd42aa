//! The runner: token rows in, logits out. Rows are cut into length-sorted, token-budgeted device
//! batches; each batch is padded and run through one model replica. With several devices each
//! replica takes the next batch when it is free, so faster or less loaded devices take more.
//! A batch that runs the device out of memory is run again in halves.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use candle_core::Device;
use skyscore_core::ScoreStats;

use super::EngineError;
use crate::batching::{plan_batches, BatchLimits};
use crate::device::{is_out_of_memory, DeviceSpec};
use crate::models::{ModelBatch, RewardModel};

/// The model loaded on one device.
pub struct Replica {
    pub spec: DeviceSpec,
    pub device: Device,
    pub model: RewardModel,
}

/// What one device batch produced: scores in batch-row order and its figures.
pub type BatchOutput = (Vec<f32>, ScoreStats);

/// Called after each device batch with its rows, their scores and its figures.
pub type OnBatch<'a> = dyn FnMut(&[usize], &[f32], &ScoreStats) + 'a;

pub struct Runner {
    pub replicas: Vec<Replica>,
    pub pad_token_id: Option<u32>,
    pub limits: BatchLimits,
    /// Set by the caller to stop between device batches (Ctrl-C).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Runner {
    /// `Err(Stopped)` once the caller asked to stop.
    pub fn check_stop(&self) -> Result<(), EngineError> {
        match &self.stop {
            Some(flag) if flag.load(Ordering::SeqCst) => Err(EngineError::Stopped),
            _ => Ok(()),
        }
    }

    /// Scores `rows` (token ids) in length-sorted, token-budgeted batches; after each device
    /// batch, `on_batch(its rows, their scores, its figures)`. Scores come back in the order of
    /// `rows`. A stop request ends it between batches.
    pub fn run(&self, rows: &[&[u32]], on_batch: &mut OnBatch<'_>) -> Result<BatchOutput, EngineError> {
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let plan = plan_batches(&lengths, self.limits);
        let mut scores = vec![0f32; rows.len()];
        let mut stats = ScoreStats::default();
        let mut record = |batch_rows: &[usize], (logits, batch_stats): BatchOutput| {
            for (&row, score) in batch_rows.iter().zip(&logits) {
                scores[row] = *score;
            }
            on_batch(batch_rows, &logits, &batch_stats);
            stats += batch_stats;
        };
        if let [replica] = self.replicas.as_slice() {
            for batch_rows in &plan {
                self.check_stop()?;
                record(batch_rows, self.run_batch_or_halves(replica, rows, batch_rows)?);
            }
        } else {
            self.run_on_replicas(rows, &plan, &mut record)?;
        }
        Ok((scores, stats))
    }

    fn run_batch_or_halves(
        &self,
        replica: &Replica,
        rows: &[&[u32]],
        batch_rows: &[usize],
    ) -> Result<BatchOutput, EngineError> {
        run_splitting_on_oom(batch_rows, &mut |part| self.run_batch(replica, rows, part))
    }

    /// One forward pass: pads the batch's rows, runs the model, brings the f32 scores back.
    fn run_batch(&self, replica: &Replica, rows: &[&[u32]], batch_rows: &[usize]) -> Result<BatchOutput, EngineError> {
        let ids: Vec<&[u32]> = batch_rows.iter().map(|&i| rows[i]).collect();
        let width = ids.iter().map(|r| r.len()).max().unwrap_or(0);
        let context = || format!("forward pass on {} ({} rows × {width} tokens)", replica.spec, ids.len());
        let forward = || -> candle_core::Result<(Vec<f32>, usize)> {
            let batch = ModelBatch::padded(&ids, self.pad_token_id, &replica.device)?;
            let logits = replica.model.forward(&batch)?.to_vec1()?;
            Ok((logits, batch.padded_tokens()))
        };
        let (logits, padded_tokens) = forward().map_err(|source| {
            if is_out_of_memory(&source) {
                EngineError::OutOfMemory { context: context(), source }
            } else {
                EngineError::Forward { context: context(), source }
            }
        })?;
        let stats = ScoreStats {
            model_rows: ids.len(),
            tokens: ids.iter().map(|r| r.len()).sum(),
            padded_tokens,
            batches: 1,
            ..Default::default()
        };
        Ok((logits, stats))
    }

    /// Spreads the planned batches over the replicas: each device thread takes the next batch
    /// when it is done with its last, and results are recorded here as they arrive. The first
    /// error stops the others after their current batch.
    fn run_on_replicas(
        &self,
        rows: &[&[u32]],
        plan: &[Vec<usize>],
        record: &mut impl FnMut(&[usize], BatchOutput),
    ) -> Result<(), EngineError> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Result<(usize, BatchOutput), EngineError>>();
        std::thread::scope(|scope| {
            for replica in &self.replicas {
                let (tx, next, failed) = (tx.clone(), &next, &failed);
                scope.spawn(move || loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = self.check_stop() {
                        let _ = tx.send(Err(e));
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= plan.len() {
                        break;
                    }
                    let result = self.run_batch_or_halves(replica, rows, &plan[i]).map(|r| (i, r));
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if tx.send(result).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut first_error = None;
            for message in rx {
                match message {
                    Ok((i, result)) => record(&plan[i], result),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }
}

/// Runs a batch; when the device runs out of memory, runs each half instead (recursively, down
/// to single rows), so a token budget too large for the card slows a long job down instead of
/// ending it. Scores do not depend on batch mates, so the halves give the same scores.
fn run_splitting_on_oom(
    batch_rows: &[usize],
    run: &mut impl FnMut(&[usize]) -> Result<BatchOutput, EngineError>,
) -> Result<BatchOutput, EngineError> {
    match run(batch_rows) {
        Err(EngineError::OutOfMemory { .. }) if batch_rows.len() > 1 => {
            tracing::warn!(
                rows = batch_rows.len(),
                "out of device memory; running the batch in two halves (lower --max-batch-tokens to avoid this)"
            );
            let (left, right) = batch_rows.split_at(batch_rows.len() / 2);
            let (mut logits, mut stats) = run_splitting_on_oom(left, run)?;
            let (more, more_stats) = run_splitting_on_oom(right, run)?;
            logits.extend(more);
            stats += more_stats;
            Ok((logits, stats))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in forward pass: out of memory above `limit` rows, else each row's index as its score.
    fn fake_run(limit: usize, calls: &mut Vec<usize>) -> impl FnMut(&[usize]) -> Result<BatchOutput, EngineError> + '_ {
        move |rows: &[usize]| {
            calls.push(rows.len());
            if rows.len() > limit {
                return Err(EngineError::OutOfMemory {
                    context: "forward pass on cuda:0".into(),
                    source: candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into()),
                });
            }
            let stats = ScoreStats { model_rows: rows.len(), tokens: rows.len(), batches: 1, ..Default::default() };
            Ok((rows.iter().map(|&r| r as f32).collect(), stats))
        }
    }

    #[test]
    fn out_of_memory_batches_run_in_halves_with_scores_in_place() {
        let rows: Vec<usize> = (10..21).collect();
        let mut calls = Vec::new();
        let (logits, stats) = run_splitting_on_oom(&rows, &mut fake_run(3, &mut calls)).unwrap();
        assert_eq!(logits, rows.iter().map(|&r| r as f32).collect::<Vec<_>>());
        assert_eq!((stats.tokens, stats.batches), (11, 4));
        assert_eq!(calls, [11, 5, 2, 3, 6, 3, 3]);
    }

    #[test]
    fn other_errors_and_single_rows_out_of_memory_are_not_retried() {
        let mut calls = Vec::new();
        let err = run_splitting_on_oom(&[7], &mut fake_run(0, &mut calls)).unwrap_err();
        assert!(matches!(err, EngineError::OutOfMemory { .. }), "{err}");
        assert_eq!(calls, [1]);
        let mut broken = |_: &[usize]| -> Result<BatchOutput, EngineError> {
            Err(EngineError::Forward {
                context: "forward".into(),
                source: candle_core::Error::Msg("shape mismatch".into()),
            })
        };
        let err = run_splitting_on_oom(&[1, 2, 3], &mut broken).unwrap_err();
        assert_eq!(err.to_string(), "forward: shape mismatch");
    }
}
