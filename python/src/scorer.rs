//! The native scorer behind `skyscore.Scorer`: one loaded [`Engine`], fed Arrow record batches
//! (scored in windows of `chunk_rows`, in order) or JSON message lists, with the same row
//! policy as `skyscore score`: a row that cannot be scored is an error naming it, or a null
//! with `skip_invalid`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use datafusion::arrow::array::{Float32Array, RecordBatch};
use datafusion::arrow::datatypes::Schema;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use skyscore_core::{Conversation, RowResult, RowScore, Scored, Scorer};
use skyscore_engine::{ConversationChunk, DeviceList, Dtype, DtypeChoice, EngineError, EngineOptions};
use skyscore_udf::columns::{
    added_column_clash, batch_conversations, row_label, scored_columns, scored_fields, ColumnNames,
};
use skyscore_udf::ScoringService;

use crate::arrow::{import_batch, ArrowData};
use crate::report::{Setup, Tally};
use crate::udf::ScalarUdf;

#[pyclass(frozen, module = "skyscore._skyscore")]
pub struct Engine {
    engine: Arc<skyscore_engine::Engine>,
    /// The engine's stop flag: set on Ctrl-C, cleared once the call has returned.
    stop: Arc<AtomicBool>,
    tally: Mutex<Tally>,
    setup: Setup,
    chunk_rows: usize,
    /// The SQL functions' service, made on the first `udfs()` call (its cache and figures are
    /// shared by every context the functions are registered on).
    service: OnceLock<Arc<ScoringService>>,
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Options and bad input are the caller's mistake (`ValueError`); the rest concerns the model,
/// its files or the device (`RuntimeError`).
fn engine_error(e: EngineError) -> PyErr {
    match e {
        EngineError::Options(msg) => PyValueError::new_err(msg),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (model, *, device=None, dtype=None, max_length=None, batch_size=None,
        max_batch_tokens=None, chunk_rows=None, truncation_side=None, store=None, use_store=true,
        max_memory_gb=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: String,
        device: Option<&str>,
        dtype: Option<&str>,
        max_length: Option<usize>,
        batch_size: Option<usize>,
        max_batch_tokens: Option<usize>,
        chunk_rows: Option<usize>,
        truncation_side: Option<&str>,
        store: Option<PathBuf>,
        use_store: bool,
        max_memory_gb: Option<f64>,
    ) -> PyResult<Self> {
        let defaults = EngineOptions::default();
        let devices = match device {
            Some(d) => d.parse::<DeviceList>().map_err(value_error)?,
            None => DeviceList::default_for_build(),
        };
        let choice = match dtype {
            Some(d) => d.parse::<DtypeChoice>().map_err(value_error)?,
            None => DtypeChoice::Fixed(Dtype::default_for(devices.on_gpu())),
        };
        let (dtype, dtype_reason) = choice.resolve(devices.on_gpu());
        if let Some(gb) = max_memory_gb.filter(|gb| !(gb.is_finite() && *gb > 0.0)) {
            return Err(PyValueError::new_err(format!("max_memory must be a positive number of GB, got {gb}")));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let options = EngineOptions {
            max_length: max_length.unwrap_or(defaults.max_length),
            truncation_side: match truncation_side {
                Some(side) => side.parse().map_err(value_error)?,
                None => defaults.truncation_side,
            },
            batch_size: batch_size.unwrap_or(defaults.batch_size),
            max_batch_tokens,
            chunk_rows,
            devices,
            dtype,
            store: if use_store { store.or_else(skyscore_engine::store::default_path) } else { None },
            max_memory: max_memory_gb.map(|gb| (gb * 1e9) as u64).or_else(skyscore_engine::engine::default_max_memory),
            stop: Some(stop.clone()),
            ..defaults
        };
        let started = Instant::now();
        let engine = py.detach(|| skyscore_engine::Engine::load(&model, &options)).map_err(engine_error)?;
        let setup = Setup {
            model,
            device: options.devices.to_string(),
            dtype: options.dtype.to_string(),
            dtype_reason,
            max_length: options.max_length,
            batch_size: options.batch_size,
            load_s: started.elapsed().as_secs_f64(),
            model_limit: engine.checkpoint().arch.max_positions(),
        };
        Ok(Self {
            engine: Arc::new(engine),
            stop,
            tally: Mutex::new(Tally::default()),
            setup,
            chunk_rows: options.chunk_rows(),
            service: OnceLock::new(),
        })
    }

    /// Scores one record batch; returns it with `score`, `num_tokens` and `truncated` added.
    /// `first_row` numbers its rows in error messages; `source` names the data.
    #[pyo3(signature = (batch, *, instruction_column, input_column, output_column, id_column=None,
        first_row=0, skip_invalid=false, source="the table"))]
    #[allow(clippy::too_many_arguments)]
    fn score_batch(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        instruction_column: String,
        input_column: String,
        output_column: String,
        id_column: Option<String>,
        first_row: usize,
        skip_invalid: bool,
        source: &str,
    ) -> PyResult<ArrowData> {
        let batch = import_batch(batch)?;
        let names =
            ColumnNames { instruction: instruction_column, input: input_column, output: output_column, id: id_column };
        let schema = batch.schema();
        names.check(&schema, source).map_err(value_error)?;
        if let Some(clash) = added_column_clash(&schema) {
            return Err(PyValueError::new_err(format!(
                "{source} already has a `{clash}` column (skyscore adds score, num_tokens and truncated)"
            )));
        }
        let id_column = names.id_column(&schema).map(str::to_string);

        let started = Instant::now();
        let mut results: Vec<RowResult> = Vec::with_capacity(batch.num_rows());
        let mut stats = skyscore_core::ScoreStats::default();
        let windows = (0..batch.num_rows()).step_by(self.chunk_rows).map(|start| {
            Ok(Window { batch: batch.slice(start, self.chunk_rows.min(batch.num_rows() - start)), names: &names })
        });
        let outcome = crate::interrupt::run(py, &self.stop, || {
            self.engine.score_chunks(windows, &|_, _| {}, |_, scored: Scored| {
                results.extend(scored.rows);
                stats += scored.stats;
                Ok(())
            })
        });
        // Counted even when interrupted: the chunks scored before Ctrl-C were real work.
        let mut tally = self.tally.lock().expect("tally lock");
        tally.stats += stats;
        tally.scoring_s += started.elapsed().as_secs_f64();
        outcome?.map_err(engine_error)?;

        let rows = apply_row_policy(results, skip_invalid, |i| row_label(&batch, id_column.as_deref(), first_row, i))?;
        for row in &rows {
            tally.add_row(row.as_ref());
        }
        drop(tally);
        Ok(ArrowData::batch(with_scores(&batch, &rows).map_err(value_error)?))
    }

    /// Scores JSON message lists (`[{"role": ..., "content": ...}, ...]`); None gives null.
    #[pyo3(signature = (messages, *, skip_invalid=false))]
    fn score_chat(&self, py: Python<'_>, messages: Vec<Option<String>>, skip_invalid: bool) -> PyResult<ArrowData> {
        let mut present = Vec::new();
        let mut conversations: Vec<Conversation<'static>> = Vec::new();
        for (i, json) in messages.iter().enumerate() {
            let Some(json) = json else { continue };
            let conversation = serde_json::from_str::<Conversation<'static>>(json).map_err(|e| {
                PyValueError::new_err(format!("messages[{i}] is not a JSON list of {{role, content}}: {e}"))
            })?;
            present.push(i);
            conversations.push(conversation);
        }
        let started = Instant::now();
        let scored = crate::interrupt::run(py, &self.stop, || self.engine.score(&conversations))?
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let rows = apply_row_policy(scored.rows, skip_invalid, |k| format!("messages[{}]", present[k]))?;
        let mut tally = self.tally.lock().expect("tally lock");
        tally.stats += scored.stats;
        tally.scoring_s += started.elapsed().as_secs_f64();
        let mut scores: Vec<Option<f32>> = vec![None; messages.len()];
        for (&i, row) in present.iter().zip(&rows) {
            tally.add_row(row.as_ref());
            scores[i] = row.map(|r| r.score);
        }
        Ok(ArrowData::array(Arc::new(Float32Array::from(scores))))
    }

    /// The figures so far as JSON (`Scorer.stats` parses it).
    fn stats_json(&self) -> String {
        let sql = self.service.get().map(|s| (s.stats(), s.distributions()));
        let store = crate::report::StoreFigures {
            path: self.engine.store_path().map(|p| p.display().to_string()),
            committed_rows: self.engine.committed_rows(),
            outcome: self.engine.store_outcome(),
        };
        crate::report::to_json(&self.tally.lock().expect("tally lock"), &self.setup, &store, sql)
    }

    /// What the scores depend on besides the rows: the metadata `skyscore score` writes.
    fn metadata(&self) -> Vec<(String, String)> {
        self.engine.metadata()
    }

    /// `skywork_score` and `skywork_score_chat` over this engine, for datafusion-python.
    fn udfs(&self) -> Vec<ScalarUdf> {
        let service = self.service.get_or_init(|| ScoringService::new(self.engine.clone() as Arc<dyn Scorer>));
        skyscore_udf::udfs(service).into_iter().map(ScalarUdf::new).collect()
    }
}

/// A window of a record batch as one engine chunk.
struct Window<'n> {
    batch: RecordBatch,
    names: &'n ColumnNames,
}

impl ConversationChunk for Window<'_> {
    fn conversations(&self) -> Vec<Result<Conversation<'_>, String>> {
        batch_conversations(&self.batch, self.names)
    }
}

/// Scores, or nulls for invalid rows with `skip_invalid`; otherwise the first invalid row is a
/// `ValueError` that names it.
fn apply_row_policy(
    results: Vec<RowResult>,
    skip_invalid: bool,
    label: impl Fn(usize) -> String,
) -> PyResult<Vec<Option<RowScore>>> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, row)| match row {
            Ok(score) => Ok(Some(score)),
            Err(reason) if skip_invalid => {
                tracing::warn!("{}: {reason}; score set to null", label(i));
                Ok(None)
            }
            Err(reason) => Err(PyValueError::new_err(format!(
                "{}: {reason} (pass skip_invalid=True to score it as null)",
                label(i)
            ))),
        })
        .collect()
}

/// The input batch with the three result columns appended (its schema's metadata kept).
fn with_scores(batch: &RecordBatch, rows: &[Option<RowScore>]) -> Result<RecordBatch, String> {
    let schema = Schema::new_with_metadata(scored_fields(&batch.schema()), batch.schema().metadata().clone());
    RecordBatch::try_new(Arc::new(schema), scored_columns(batch, rows)).map_err(|e| e.to_string())
}
