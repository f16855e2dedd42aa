//! The score distribution on the terminal: count, mean, min/max, the quantiles and a small
//! histogram of horizontal bars, after the run's summary line.

use skyscore_core::DistributionSummary;

/// Bins of the terminal histogram (the JSON and the plot have more).
pub const TERMINAL_BINS: usize = 12;
pub use skyscore_core::distribution::DETAILED_BINS;

const BAR_WIDTH: usize = 40;

/// The text block; `label` names what was scored ("scores", "skywork_score").
pub fn render(label: &str, s: &DistributionSummary) -> String {
    let mut out = format!("{label}: {} scored · mean {:.4} · min {:.4} · max {:.4}\n ", s.count, s.mean, s.min, s.max);
    for (p, v) in &s.quantiles.0 {
        out.push_str(&format!(" p{p} {v:.3}"));
    }
    out.push('\n');
    let h = &s.histogram;
    let most = h.counts.iter().copied().max().unwrap_or(0).max(1);
    for (i, &count) in h.counts.iter().enumerate() {
        let eighths = (count as usize * BAR_WIDTH * 8).div_ceil(most as usize);
        let bar = bar(if count > 0 { eighths.max(1) } else { 0 });
        out.push_str(&format!(
            "  {:>9.3} … {:<9.3} {bar:<width$} {count}\n",
            h.edges[i],
            h.edges[i + 1],
            width = BAR_WIDTH
        ));
    }
    out
}

/// A bar of `eighths` eighths of a character cell.
fn bar(eighths: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(PARTS[eighths % 8]);
    }
    s
}

#[cfg(test)]
mod tests {
    use skyscore_core::ScoreDistribution;

    use super::*;

    #[test]
    fn every_bin_is_a_line_with_its_count() {
        let mut d = ScoreDistribution::new();
        (0..100).for_each(|i| d.add(i as f64 / 10.0));
        let s = d.summary(TERMINAL_BINS).unwrap();
        let text = render("scores", &s);
        assert!(text.starts_with("scores: 100 scored · mean 4.9500"), "{text}");
        assert!(text.contains(" p50 "), "{text}");
        let bars: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(bars.len(), s.histogram.counts.len());
        let total: u64 = bars.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum();
        assert_eq!(total, 100);
        assert_eq!(bar(17), "██▏");
    }
}
