//! The plan rules over the fake scorer: which rows reach the model, and where the rules move
//! filters and scoring projections.

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::displayable;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::*;
use crate::testing::FakeScorer;
use crate::ScoringService;

/// A session over a 100-row table `t(id, instruction, output)`, with or without the rule.
fn session(with_rule: bool) -> (SessionContext, Arc<FakeScorer>) {
    let mut builder =
        SessionStateBuilder::new().with_config(SessionConfig::new().with_target_partitions(2)).with_default_features();
    if with_rule {
        builder = builder.with_physical_optimizer_rules(model_aware_rules());
    }
    let ctx = SessionContext::new_with_state(builder.build());
    let fake = FakeScorer::new();
    crate::register(&ctx, ScoringService::new(fake.clone()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("instruction", DataType::Utf8, false),
        Field::new("output", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..100)),
            Arc::new(StringArray::from_iter_values((0..100).map(|i| format!("question {i}")))),
            Arc::new(StringArray::from_iter_values((0..100).map(|i| format!("answer {i}")))),
        ],
    )
    .unwrap();
    ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())).unwrap();
    (ctx, fake)
}

const FILTERED: &str = "SELECT id, skywork_score(instruction, output) AS s FROM t WHERE id < 7";

/// Lines of the indented physical plan: the first one mentioning each operator.
fn operator_line(plan: &str, needle: &str) -> usize {
    plan.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle} in\n{plan}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_sees_only_rows_that_pass_the_filter() {
    let (ctx, fake) = session(true);
    let df = ctx.sql(FILTERED).await.unwrap();
    let plan = df.clone().create_physical_plan().await.unwrap();
    let text = displayable(plan.as_ref()).indent(true).to_string();
    let (projection, filter) = (operator_line(&text, "skywork_score"), operator_line(&text, "FilterExec"));
    assert!(projection < filter, "the scoring projection runs above the filter:\n{text}");
    let rows: usize = df.collect().await.unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 7);
    assert_eq!(fake.rows_scored(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_swaps_a_filter_back_above_a_scoring_projection() {
    // Plan without the rule, then apply it by hand: whatever order DataFusion chose, the
    // result filters first.
    let (ctx, _) = session(false);
    let plan = ctx.sql(FILTERED).await.unwrap().create_physical_plan().await.unwrap();
    let optimized = FilterBeforeModel.optimize(plan, &ConfigOptions::default()).unwrap();
    let text = displayable(optimized.as_ref()).indent(true).to_string();
    assert!(operator_line(&text, "skywork_score") < operator_line(&text, "FilterExec"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_on_the_score_stays_above_the_model() {
    let (ctx, fake) = session(true);
    let sql = "SELECT id FROM (SELECT id, skywork_score(instruction, output) AS s FROM t) WHERE s > 32";
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    // Roles and texts: ids 10..99 (two-digit numbers) score 33.2, ids 0..9 score 31.2.
    let expected = (0..100)
        .filter(|i| {
            let (q, a) = (format!("question {i}"), format!("answer {i}"));
            FakeScorer::score_of(&skyscore_core::ScoreRequest::new(&q, None, &a).conversation()) > 32.0
        })
        .count();
    assert!(expected > 0 && expected < 100);
    assert_eq!(rows, expected);
    assert_eq!(fake.rows_scored(), 100, "every row is scored once, even when evaluated twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conjunction_runs_its_cheap_part_before_the_model() {
    // Half the rows pass `id < 50`: above DataFusion's own pre-selection threshold (an AND
    // whose left side keeps at most 20% of a batch evaluates its right side on those only).
    for sql in [
        "SELECT id FROM t WHERE id < 50 AND skywork_score(instruction, output) > 0",
        "SELECT count(*) FROM (SELECT skywork_score(instruction, output) AS s FROM t WHERE id < 50) WHERE s > 0",
    ] {
        let (ctx, fake) = session(true);
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        assert!(!batches.is_empty());
        assert_eq!(fake.rows_scored(), 50, "{sql}");
    }
    // Without the rule DataFusion evaluates both sides of the AND on every row.
    let (ctx, fake) = session(false);
    ctx.sql("SELECT id FROM t WHERE id < 50 AND skywork_score(instruction, output) > 0")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(fake.rows_scored(), 100, "the case the rule is for");
}

/// A session like Ballista's (no round-robin repartition) over `t` written as a Parquet file:
/// nothing stands between the filter and the file scan.
async fn parquet_session(dir: &std::path::Path, with_rules: bool) -> (SessionContext, Arc<FakeScorer>) {
    let path = dir.join(format!("t-{with_rules}.parquet"));
    let (ctx, _) = session(false);
    ctx.sql(&format!("COPY t TO '{}' STORED AS PARQUET", path.display())).await.unwrap().collect().await.unwrap();
    let config = SessionConfig::new().with_target_partitions(1).with_round_robin_repartition(false);
    let mut builder = SessionStateBuilder::new().with_config(config).with_default_features();
    if with_rules {
        builder = builder.with_physical_optimizer_rules(model_aware_rules());
    }
    let ctx = SessionContext::new_with_state(builder.build());
    let fake = FakeScorer::new();
    crate::register(&ctx, ScoringService::new(fake.clone()));
    ctx.register_parquet("t", path.to_str().unwrap(), Default::default()).await.unwrap();
    (ctx, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_stays_out_of_file_scans_below_a_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, fake) = parquet_session(dir.path(), true).await;
    let df = ctx.sql(FILTERED).await.unwrap();
    let text = displayable(df.clone().create_physical_plan().await.unwrap().as_ref()).indent(true).to_string();
    assert!(operator_line(&text, "skywork_score") < operator_line(&text, "FilterExec"), "{text}");
    assert!(!text.contains("ModelInputMark"), "the marks are gone once planned:\n{text}");
    let rows: usize = df.collect().await.unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!((rows, fake.rows_scored()), (7, 7));

    // DataFusion alone merges the scoring projection into the scan, below the filter.
    let (ctx, fake) = parquet_session(dir.path(), false).await;
    let df = ctx.sql(FILTERED).await.unwrap();
    let text = displayable(df.clone().create_physical_plan().await.unwrap().as_ref()).indent(true).to_string();
    assert!(operator_line(&text, "DataSourceExec") == operator_line(&text, "skywork_score"), "{text}");
    df.collect().await.unwrap();
    assert_eq!(fake.rows_scored(), 100, "the case KeepModelAboveFilters is for");
}

#[tokio::test]
async fn logical_plans_that_call_the_model_are_recognised() {
    let (ctx, _) = session(true);
    for (sql, calls) in [
        (FILTERED, true),
        ("SELECT id FROM t WHERE id IN (SELECT id FROM t WHERE skywork_score(instruction, output) > 0)", true),
        ("COPY (SELECT *, skywork_score(instruction, output) FROM t) TO '/tmp/x.parquet'", true),
        ("SELECT id, upper(instruction) FROM t", false),
        ("COPY (SELECT * FROM t) TO '/tmp/x.parquet'", false),
    ] {
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        assert_eq!(plan_calls_model(&plan), calls, "{sql}");
    }
}
