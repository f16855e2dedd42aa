//! Keeping the model above filters in physical plans, so it only sees rows that pass them.
//!
//! 1. DataFusion's physical `ProjectionPushdown` swaps a narrowing projection below a filter:
//!    `SELECT id, skywork_score(..) FROM sft WHERE id < 50` would run the model on every row and
//!    filter afterwards. This rule, run after it, swaps such pairs back whenever the filter does
//!    not need the projection's computed columns.
//! 2. The logical optimizer merges filters into one conjunction (`id < 50 AND skywork_score(..) >
//!    0`, also from a filter on a subquery's score), and an `AND` evaluates both sides on every
//!    row of the batch. The rule splits such a filter in two: the conjuncts that do not call the
//!    model first, the ones that do on the rows left.
//! 3. Where nothing stands between a filter and a file scan (Ballista plans: no round-robin
//!    repartition), the same `ProjectionPushdown` goes on to merge the swapped projection into
//!    the scan, which then runs the model while reading, before any filter, out of reach of
//!    the swap above. [`KeepModelAboveFilters`], first in the rule list, marks the filter below
//!    a scoring projection so that the projection stays put; [`FilterBeforeModel`], last,
//!    removes the marks. [`model_aware_rules`] is the whole list.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::projection::update_expr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{conjunction, split_conjunction, PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{
    replace_children_if_necessary, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    SendableRecordBatchStream,
};

/// Names of the functions that run the model.
pub const MODEL_FUNCTIONS: [&str; 2] = [crate::skywork_score::NAME, crate::skywork_score_chat::NAME];

/// Whether a logical plan (subqueries included) calls a function that runs the model: the app
/// loads the model before planning a `COPY` only when it does (the written file must carry
/// the model's metadata, and COPY fixes its options when planned).
pub fn plan_calls_model(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if MODEL_FUNCTIONS.contains(&f.name()) {
                        found = true;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

fn calls_model(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>() {
            if MODEL_FUNCTIONS.contains(&f.name()) {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// DataFusion's physical optimizer rules with skyscore's around them: [`KeepModelAboveFilters`]
/// first, [`FilterBeforeModel`] last. Every skyscore session (local, cluster client, scheduler)
/// plans with this list.
pub fn model_aware_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> = vec![Arc::new(KeepModelAboveFilters)];
    rules.extend(PhysicalOptimizer::new().rules);
    rules.push(Arc::new(FilterBeforeModel));
    rules
}

/// Puts a [`ModelInputMark`] between a projection that runs the model and the filter below it.
#[derive(Debug, Default)]
pub struct KeepModelAboveFilters;

impl PhysicalOptimizerRule for KeepModelAboveFilters {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            let Some(projection) = plan.downcast_ref::<ProjectionExec>() else { return Ok(Transformed::no(plan)) };
            let input = projection.input();
            if !input.is::<FilterExec>() || !projection.expr().iter().any(|p| calls_model(&p.expr)) {
                return Ok(Transformed::no(plan));
            }
            let marked: Arc<dyn ExecutionPlan> = Arc::new(ModelInputMark { input: input.clone() });
            replace_children_if_necessary(plan.clone(), vec![marked]).map(Transformed::yes)
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "skyscore_keep_model_above_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A pass-through node that lives only while the physical optimizer runs: projections cannot
/// be swapped below it (the default of `try_swapping_with_projection`). Never serialized:
/// [`FilterBeforeModel`] removes it before the plan leaves the optimizer.
#[derive(Debug)]
pub struct ModelInputMark {
    input: Arc<dyn ExecutionPlan>,
}

impl DisplayAs for ModelInputMark {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ModelInputMark")
    }
}

impl ExecutionPlan for ModelInputMark {
    fn name(&self) -> &str {
        "ModelInputMark"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(ModelInputMark { input: children.swap_remove(0) }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

#[derive(Debug, Default)]
pub struct FilterBeforeModel;

impl FilterBeforeModel {
    /// `Filter(Projection(input))` → `Projection(Filter'(input))` when the projection calls
    /// the model and the predicate reads only columns the projection passes through.
    fn swap(plan: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
        let Some(filter) = plan.downcast_ref::<FilterExec>() else { return Ok(Transformed::no(plan)) };
        let Some(projection) = filter.input().downcast_ref::<ProjectionExec>() else {
            return Ok(Transformed::no(plan));
        };
        if filter.projection().is_some() || !projection.expr().iter().any(|p| calls_model(&p.expr)) {
            return Ok(Transformed::no(plan));
        }
        let passes_through = collect_columns(filter.predicate())
            .iter()
            .all(|c| projection.expr().get(c.index()).is_some_and(|p| p.expr.is::<Column>()));
        if !passes_through {
            return Ok(Transformed::no(plan));
        }
        let Some(predicate) = update_expr(filter.predicate(), projection.expr(), true)? else {
            return Ok(Transformed::no(plan));
        };
        let filter = FilterExec::try_new(predicate, projection.input().clone())?
            .with_default_selectivity(filter.default_selectivity())?;
        let projection = ProjectionExec::try_new(projection.expr().to_vec(), Arc::new(filter))?;
        Ok(Transformed::yes(Arc::new(projection)))
    }
}

impl FilterBeforeModel {
    /// `Filter(cheap AND model)` → `Filter(model, Filter(cheap))`: the model sees only the rows
    /// the other conjuncts keep. The outer filter keeps the original's projection and fetch.
    fn split(plan: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
        let Some(filter) = plan.downcast_ref::<FilterExec>() else { return Ok(Transformed::no(plan)) };
        let (model, cheap): (Vec<_>, Vec<_>) =
            split_conjunction(filter.predicate()).into_iter().cloned().partition(calls_model);
        if model.is_empty() || cheap.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let inner = FilterExec::try_new(conjunction(cheap), filter.input().clone())?
            .with_default_selectivity(filter.default_selectivity())?;
        let outer =
            FilterExecBuilder::from(filter).with_predicate(conjunction(model)).with_input(Arc::new(inner)).build()?;
        Ok(Transformed::yes(Arc::new(outer)))
    }
}

impl PhysicalOptimizerRule for FilterBeforeModel {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = plan
            .transform_up(|plan| match plan.downcast_ref::<ModelInputMark>() {
                Some(mark) => Ok(Transformed::yes(mark.input.clone())),
                None => Ok(Transformed::no(plan)),
            })?
            .data;
        let plan = plan.transform_up(Self::split)?.data;
        plan.transform_up(Self::swap).map(|t| t.data)
    }

    fn name(&self) -> &str {
        "skyscore_filter_before_model"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
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
        let mut builder = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features();
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
    async fn parquet_session(with_rules: bool) -> (SessionContext, Arc<FakeScorer>) {
        let path = std::env::temp_dir().join(format!("skyscore-plan-{}-{with_rules}.parquet", std::process::id()));
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
        let (ctx, fake) = parquet_session(true).await;
        let df = ctx.sql(FILTERED).await.unwrap();
        let text = displayable(df.clone().create_physical_plan().await.unwrap().as_ref()).indent(true).to_string();
        assert!(operator_line(&text, "skywork_score") < operator_line(&text, "FilterExec"), "{text}");
        assert!(!text.contains("ModelInputMark"), "the marks are gone once planned:\n{text}");
        let rows: usize = df.collect().await.unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!((rows, fake.rows_scored()), (7, 7));

        // DataFusion alone merges the scoring projection into the scan, below the filter.
        let (ctx, fake) = parquet_session(false).await;
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
}
