//! Cutting a window of tokenized rows into device batches: length-sorted so rows of similar
//! length share a batch (little padding), capped by a row count and a padded-token budget.

/// Limits for one device batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    /// Upper bound on `rows × longest row` (padded tokens); a single longer row still runs alone.
    pub max_tokens: usize,
}

/// Plans batches over rows of the given lengths. Returns row indices per batch; every index
/// appears exactly once. Rows are visited longest first, so the first row of a batch fixes
/// its padded width.
pub fn plan_batches(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let max_rows = limits.max_rows.max(1);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut width = 0;
    for idx in order {
        let fits = current.len() < max_rows && (current.len() + 1) * width.max(lengths[idx]) <= limits.max_tokens;
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            width = lengths[idx];
        }
        current.push(idx);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_once_within_limits() {
        let lengths: Vec<usize> = (0..100).map(|i| (i * 37) % 300 + 1).collect();
        let limits = BatchLimits { max_rows: 16, max_tokens: 2048 };
        let batches = plan_batches(&lengths, limits);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for b in &batches {
            let width = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() <= 16);
            assert!(b.len() == 1 || b.len() * width <= 2048, "{b:?}");
            assert_eq!(width, lengths[b[0]], "first row sets the width");
        }
    }

    #[test]
    fn oversized_row_runs_alone() {
        let batches = plan_batches(&[10, 5000, 10], BatchLimits { max_rows: 16, max_tokens: 100 });
        assert_eq!(batches, vec![vec![1], vec![0, 2]]);
    }

    #[test]
    fn empty_input_gives_no_batches() {
        assert!(plan_batches(&[], BatchLimits { max_rows: 4, max_tokens: 10 }).is_empty());
    }
}
