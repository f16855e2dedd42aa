//! SQL: `skywork_score` in DataFusion queries runs the model once per distinct row, however
//! often the plan evaluates it, and gives the same scores as the engine (`skyscore score`).

mod common;

use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float32Type, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use skyscore::sql::session::{new_session, register_table};
use skyscore_core::ScoreRequest;
use skyscore_engine::{Engine, EngineOptions};
use skyscore_udf::ScoringService;

fn engine() -> Arc<Engine> {
    Arc::new(Engine::load(model_dir("tiny-llama").to_str().unwrap(), &EngineOptions::default()).unwrap())
}

async fn session(engine: &Arc<Engine>) -> (SessionContext, Arc<ScoringService>) {
    let service = ScoringService::new(engine.clone());
    let ctx = new_session(&service, Some(2));
    register_table(&ctx, "sft", &repo().join("sample_data/sft_sample.parquet")).await.unwrap();
    (ctx, service)
}

async fn collect(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// (id, score) pairs of a result whose first two columns are id and score.
fn id_scores(batches: &[RecordBatch]) -> Vec<(i64, f32)> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let scores = b.column(1).as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.push((ids.value(i), scores.value(i)));
        }
    }
    out
}

const DISTINCT_SAMPLE_ROWS: usize = 320;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_and_select_score_each_row_once() {
    let engine = engine();
    let (ctx, service) = session(&engine).await;
    let batches = collect(
        &ctx,
        "SELECT id, skywork_score(instruction, input, output) AS s FROM sft \
         WHERE skywork_score(instruction, input, output) > 0 ORDER BY s DESC LIMIT 10",
    )
    .await;
    let rows = id_scores(&batches);
    assert_eq!(rows.len(), 10);
    assert!(rows.windows(2).all(|w| w[0].1 >= w[1].1), "ordered by score");
    let stats = service.stats();
    assert_eq!(stats.model.model_rows, DISTINCT_SAMPLE_ROWS, "{stats:?}");
    assert!(stats.rows > stats.model.model_rows, "the plan evaluated the UDF more than once per row: {stats:?}");
    assert_eq!(stats.cache_hits, stats.rows - stats.model.model_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_down_filters_score_each_row_once() {
    let engine = engine();
    let (ctx, service) = session(&engine).await;
    collect(&ctx, "SET datafusion.execution.parquet.pushdown_filters = true").await;
    let batches = collect(
        &ctx,
        "SELECT id, s FROM (SELECT *, skywork_score(instruction, input, output) AS s FROM sft) WHERE s > 0",
    )
    .await;
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert!(n > 0 && n < DISTINCT_SAMPLE_ROWS);
    assert_eq!(service.stats().model.model_rows, DISTINCT_SAMPLE_ROWS, "{:?}", service.stats());
}

/// DataFusion's physical projection pushdown would put the model below `WHERE id < 50` and
/// score the whole table; skyscore's plan rule keeps the filter first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_on_other_columns_run_before_the_model() {
    let engine = engine();
    let (ctx, service) = session(&engine).await;
    let rows =
        id_scores(&collect(&ctx, "SELECT id, skywork_score(instruction, input, output) FROM sft WHERE id < 50").await);
    assert_eq!(rows.len(), 50);
    assert_eq!(service.stats().model.model_rows, 50, "{:?}", service.stats());
    let plan =
        collect(&ctx, "EXPLAIN SELECT id, skywork_score(instruction, input, output) FROM sft WHERE id < 50").await;
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan).unwrap().to_string();
    let physical = &text[text.find("physical_plan").unwrap()..];
    assert!(physical.find("ProjectionExec").unwrap() < physical.find("FilterExec").unwrap(), "{physical}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_rows_are_scored_once() {
    let engine = engine();
    let (ctx, service) = session(&engine).await;
    let batches = collect(
        &ctx,
        "SELECT id, skywork_score(instruction, input, output) AS s FROM \
         (SELECT * FROM sft WHERE id < 50 UNION ALL SELECT * FROM sft WHERE id < 50 UNION ALL SELECT * FROM sft WHERE id < 50) \
         ORDER BY id",
    )
    .await;
    let rows = id_scores(&batches);
    assert_eq!(rows.len(), 150);
    for triple in rows.chunks(3) {
        assert!(triple.iter().all(|r| r == &triple[0]), "duplicates share a score: {triple:?}");
    }
    assert_eq!(service.stats().model.model_rows, 50);
}

/// SQL scores equal the engine's (what `skyscore score` writes) and transformers' within 1e-4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_scores_equal_engine_scores() {
    let engine = engine();
    let (ctx, _) = session(&engine).await;
    let sql_rows =
        id_scores(&collect(&ctx, "SELECT id, skywork_score(instruction, input, output) FROM sft ORDER BY id").await);
    let rows: Vec<Row> = parity_rows().into_iter().filter(|r| r.id.is_i64()).collect();
    let reqs: Vec<ScoreRequest> =
        rows.iter().map(|r| ScoreRequest::new(&r.instruction, r.input.as_deref(), &r.output)).collect();
    let direct = scores(&engine, &reqs);
    let expected = expected("tiny-llama", "full");
    assert_eq!(sql_rows.len(), direct.len());
    for ((id, sql), direct) in sql_rows.iter().zip(&direct) {
        assert!((sql - direct).abs() <= 1e-5, "id {id}: sql {sql} vs engine {direct}");
        let exp = expected.iter().find(|e| e.id.as_i64() == Some(*id)).unwrap().score;
        assert!((*sql as f64 - exp).abs() <= 1e-4, "id {id}: sql {sql} vs transformers {exp}");
    }
}

/// Utf8, LargeUtf8 and Utf8View columns, literals and the two-argument form agree; NULL input
/// is no input; NULL instruction/output give NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_types_and_nulls() {
    let engine = engine();
    let (ctx, service) = session(&engine).await;
    let batches = collect(
        &ctx,
        "SELECT id,
            skywork_score(instruction, input, output),
            skywork_score(arrow_cast(instruction, 'Utf8'), arrow_cast(input, 'LargeUtf8'), arrow_cast(output, 'Utf8View')),
            skywork_score(instruction, CASE WHEN input = '' THEN NULL ELSE input END, output),
            skywork_score(instruction, NULL, output),
            skywork_score(instruction, '', output),
            skywork_score(instruction, output),
            skywork_score(NULL, input, output),
            skywork_score(instruction, input, NULL)
         FROM sft WHERE id < 40 ORDER BY id",
    )
    .await;
    for b in &batches {
        let col = |i: usize| b.column(i).as_primitive::<Float32Type>();
        for r in 0..b.num_rows() {
            assert_eq!(col(1).value(r), col(2).value(r), "string types");
            assert_eq!(col(1).value(r), col(3).value(r), "NULL input = empty input");
            assert_eq!(col(4).value(r), col(5).value(r));
            assert_eq!(col(4).value(r), col(6).value(r), "two-argument form = no input");
            assert!(col(7).is_null(r) && col(8).is_null(r));
        }
    }
    let literal = collect(&ctx, "SELECT skywork_score('Say hi.', '', 'Hi!')").await;
    let s = literal[0].column(0).as_primitive::<Float32Type>().value(0);
    let exp = expected("tiny-llama", "full").into_iter().find(|e| e.id == "edge-0").unwrap().score;
    assert!((s as f64 - exp).abs() <= 1e-4);
    assert!(service.stats().model.model_rows <= 81, "{:?}", service.stats());
}

/// `skywork_score_chat` on a two-turn conversation equals `skywork_score` on the row; list
/// and JSON-string messages agree; multi-turn conversations score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_messages_score_like_rows() {
    let engine = engine();
    let (ctx, _) = session(&engine).await;
    let batches = collect(
        &ctx,
        "SELECT id,
            skywork_score(instruction, input, output),
            skywork_score_chat(make_array(
                named_struct('role', 'user', 'content', CASE WHEN input = '' THEN instruction ELSE instruction || chr(10) || input END),
                named_struct('role', 'assistant', 'content', output))),
            skywork_score_chat(to_json_messages) ,
            skywork_score_chat(make_array(
                named_struct('role', 'system', 'content', 'Be brief.'),
                named_struct('role', 'user', 'content', instruction),
                named_struct('role', 'assistant', 'content', output),
                named_struct('role', 'user', 'content', 'And again?'),
                named_struct('role', 'assistant', 'content', output)))
         FROM (SELECT *, '[{\"role\": \"user\", \"content\": ' || '\"hi\"' || '}, {\"role\": \"assistant\", \"content\": \"hello\"}]' AS to_json_messages FROM sft)
         WHERE id < 20 ORDER BY id",
    )
    .await;
    let json_expected = scores(&engine, &[ScoreRequest::new("hi", None, "hello")])[0];
    for b in &batches {
        let col = |i: usize| b.column(i).as_primitive::<Float32Type>();
        for r in 0..b.num_rows() {
            assert!((col(1).value(r) - col(2).value(r)).abs() <= 1e-6, "row {r}");
            assert!((col(3).value(r) - json_expected).abs() <= 1e-6);
            assert!(col(4).value(r).is_finite());
            assert_ne!(col(4).value(r), col(1).value(r), "multi-turn differs from single turn");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_arguments_are_planning_errors() {
    let engine = engine();
    let (ctx, service) = session(&engine).await;
    for (sql, needle) in [
        ("SELECT skywork_score(instruction) FROM sft", "got 1 arguments"),
        ("SELECT skywork_score(instruction, id, output) FROM sft", "argument `input` must be a string, got Int64"),
        ("SELECT skywork_score_chat(id) FROM sft", "`messages` must be"),
    ] {
        let err = match ctx.sql(sql).await {
            Ok(df) => df.collect().await.unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{sql}: {err}");
    }
    assert_eq!(service.stats().model.model_rows, 0);
    assert!(!service.is_loaded() || service.stats().rows == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_functions_documents_the_udf() {
    let engine = engine();
    let (ctx, _) = session(&engine).await;
    let batches = collect(&ctx, "SHOW FUNCTIONS LIKE 'skywork_score%'").await;
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains("skywork_score"), "{text}");
    assert!(text.contains("Reward-model score"), "{text}");
    assert!(text.contains("skywork_score_chat"), "{text}");
}
