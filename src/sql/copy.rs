//! `COPY ... TO` a local path, as datafusion-cli writes it (one file, or a folder of files for
//! a path ending with `/`, without an extension, or `PARTITIONED BY`), without ever losing
//! data: the statement writes under a temporary name next to its target (a temporary folder for
//! a folder target), and its output is moved into place only once the statement has succeeded.
//! A file target is replaced when complete; a folder target keeps every file it held, the new
//! files join them under names of their own. A target that is, or lies inside, one of the
//! statement's input tables, or that exists as the other kind, is refused before any row is
//! read, and a failure at any step leaves nothing behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{CopyToStatement, Statement};

use crate::io::paths::{check_target, OutputKind, Placed, TempOutput};

/// A COPY to a path of this machine (or of the cluster's shared file system).
pub struct LocalCopy {
    pub statement: CopyToStatement,
    /// The target as the executors see it (absolute on a cluster).
    pub target: PathBuf,
    pub kind: OutputKind,
}

impl LocalCopy {
    /// `None` for targets that are URLs (object stores: DataFusion writes them itself).
    pub fn of(statement: &CopyToStatement, on_cluster: bool) -> Result<Option<Self>> {
        if statement.target.contains("://") {
            return Ok(None);
        }
        let single_file_output = statement.options.iter().find_map(|(key, value)| {
            key.eq_ignore_ascii_case("single_file_output").then(|| {
                let value = value.to_string();
                value.trim_matches(['\'', '"']).eq_ignore_ascii_case("true")
            })
        });
        let kind = OutputKind::of_copy(&statement.target, !statement.partitioned_by.is_empty(), single_file_output);
        let target = Path::new(&statement.target);
        let target = if on_cluster { crate::io::paths::absolute(target)? } else { target.to_path_buf() };
        Ok(Some(Self { statement: statement.clone(), target, kind }))
    }

    /// Plans the statement as written and refuses a target that cannot be written as asked or
    /// would change one of its inputs. Returns the plan (to tell whether it runs the model).
    pub async fn check(&self, ctx: &SessionContext) -> Result<LogicalPlan> {
        let plan = ctx.state().statement_to_plan(Statement::CopyTo(self.statement.clone())).await?;
        check_target(&self.target, self.kind, &input_paths(&plan))
            .with_context(|| format!("COPY to {}", self.shown()))?;
        Ok(plan)
    }

    /// Runs the statement into a temporary output and moves it into place. Returns the batches
    /// DataFusion answers (the row count) and what was placed.
    pub async fn run(
        &self,
        ctx: &SessionContext,
        finish: impl FnOnce(TempOutput, &Path) -> Result<Placed>,
    ) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>> {
        self.check(ctx).await?;
        let temp = TempOutput::beside(&self.target, self.kind)?;
        let mut statement = self.statement.clone();
        statement.target = temp.copy_location()?;
        let written = async {
            let plan = ctx.state().statement_to_plan(Statement::CopyTo(statement)).await?;
            ctx.execute_logical_plan(plan).await?.collect().await
        }
        .await;
        let batches = match written {
            Ok(batches) => batches,
            // Dropping the temporary removes whatever the statement wrote.
            Err(e) => {
                drop(temp);
                return Err(e)
                    .with_context(|| format!("COPY to {} ({} was left as it was)", self.shown(), self.shown()));
            }
        };
        let placed = finish(temp, &self.target)?;
        if let Placed::Folder { files } = &placed {
            tracing::info!("COPY added {} files to {}", files.len(), self.target.display());
        }
        Ok(batches)
    }

    fn shown(&self) -> String {
        self.target.display().to_string()
    }
}

/// The local files and folders the plan's tables read (listing tables: `-t` tables, `CREATE
/// EXTERNAL TABLE`, files queried by path).
pub fn input_paths(plan: &LogicalPlan) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Ok(provider) = source_as_provider(&scan.source) {
                if let Some(listing) = provider.downcast_ref::<ListingTable>() {
                    for url in listing.table_paths() {
                        if let Ok(path) = url.get_url().to_file_path() {
                            paths.push(path);
                        }
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    paths
}
