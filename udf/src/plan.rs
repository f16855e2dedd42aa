//! Keeping the model above filters in physical plans.
//!
//! DataFusion's physical `ProjectionPushdown` swaps a narrowing projection below a filter:
//! `SELECT id, skywork_score(..) FROM sft WHERE id < 50` would run the model on every row and
//! filter afterwards. This rule, run after it, swaps such pairs back whenever the filter does
//! not need the projection's computed columns, so the model only sees rows that pass.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::physical_expr::projection::update_expr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;

/// Names of the functions that run the model.
const MODEL_FUNCTIONS: [&str; 2] = [crate::skywork_score::NAME, crate::skywork_score_chat::NAME];

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

impl PhysicalOptimizerRule for FilterBeforeModel {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(Self::swap).map(|t| t.data)
    }

    fn name(&self) -> &str {
        "skyscore_filter_before_model"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
