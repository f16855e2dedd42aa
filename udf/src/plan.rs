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
mod tests;
