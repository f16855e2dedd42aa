//! SQL semantics of the skyscore UDFs as sqllogictest files (tests/sqllogictests/*.slt), run
//! against a session with the tiny Llama reward model and the sample table `sft`.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;
use skyscore::sql::session::{new_session, register_table};
use skyscore_engine::{Engine, EngineOptions};
use skyscore_udf::ScoringService;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

#[derive(Debug)]
struct SqlError(datafusion::error::DataFusionError);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for SqlError {}

struct SkyscoreDb {
    ctx: SessionContext,
}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => DefaultColumnType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

#[async_trait]
impl AsyncDB for SkyscoreDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let df = self.ctx.sql(sql).await.map_err(SqlError)?;
        let schema = df.schema().clone();
        let batches = df.collect().await.map_err(SqlError)?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema.fields().iter().map(|f| column_type(f.data_type())).collect();
        let mut rows = Vec::new();
        for batch in &batches {
            for r in 0..batch.num_rows() {
                let row = batch
                    .columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(r) {
                            "NULL".to_string()
                        } else {
                            match array_value_to_string(c, r).unwrap() {
                                s if s.is_empty() => "(empty)".to_string(),
                                s => s,
                            }
                        }
                    })
                    .collect();
                rows.push(row);
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "skyscore"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let engine = Arc::new(Engine::load(model_dir("tiny-llama").to_str().unwrap(), &EngineOptions::default()).unwrap());
    let mut files: Vec<_> = std::fs::read_dir(repo().join("tests/sqllogictests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let engine = engine.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let engine = engine.clone();
            async move {
                let service = ScoringService::new(engine);
                let ctx = new_session(&service, Some(2));
                register_table(&ctx, "sft", &repo().join("sample_data/sft_sample.parquet")).await.unwrap();
                Ok::<_, SqlError>(SkyscoreDb { ctx })
            }
        });
        eprintln!("running {}", file.display());
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {}", file.display(), e.display(true));
        }
    }
}
