//! The score distribution: at the end of `skyscore score` and `skyscore sql`, in `--stats-json`,
//! as a picture (`--plot`), and for a file scored earlier (`skyscore stats`).

mod common;

use std::path::Path;

use common::*;

fn tiny_llama() -> String {
    p(&model_dir("tiny-llama")).to_string()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks quantiles against an exact sort of `scores`: each estimate lies between the exact
/// values 1% of the rows either side of its rank (the t-digest's error at this size).
fn assert_quantiles_match(quantiles: &serde_json::Value, scores: &[f64]) {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    for p in [1, 5, 10, 25, 50, 75, 90, 95, 99] {
        let v = quantiles[format!("p{p}")].as_f64().unwrap();
        let q = p as f64 / 100.0;
        let lo = sorted[((q - 0.01) * n as f64).floor().max(0.0) as usize];
        let hi = sorted[(((q + 0.01) * n as f64).ceil() as usize).min(n - 1)];
        assert!(lo <= v && v <= hi, "p{p} = {v}, exact sort says [{lo}, {hi}]");
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

fn assert_svg_of_plot_size(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(100)]);
    assert!(text.contains(r#"width="1200""#) && text.contains(r#"height="720""#), "{}", &text[..200]);
    assert!(text.contains("p50 "), "quantiles marked");
    assert!(text.trim_end().ends_with("</svg>"));
}

fn scores_of(path: &Path) -> Vec<f64> {
    read_jsonl::<serde_json::Value>(path).iter().map(|l| l["score"].as_f64().unwrap()).collect()
}

#[test]
fn score_reports_the_distribution_and_stats_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stats, png) = (dir.path().join("s.jsonl"), dir.path().join("stats.json"), dir.path().join("s.png"));
    let input = repo().join("sample_data/sft_sample.parquet");
    let run = score(&tiny_llama(), &input, &out, &["--stats-json", p(&stats), "--plot", p(&png), "--no-progress"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let scores = scores_of(&out);
    let s = json(&stats);
    assert_eq!(s["score_count"], 320);
    let mean = scores.iter().sum::<f64>() / 320.0;
    assert!((s["score_mean"].as_f64().unwrap() - mean).abs() < 1e-6);
    // f32 scores: the JSONL output writes them shortest-round-trip, the stats as f64.
    let close = |key: &str, v: f64| assert!((s[key].as_f64().unwrap() - v).abs() < 1e-6, "{key}: {} vs {v}", s[key]);
    close("score_min", scores.iter().copied().fold(f64::MAX, f64::min));
    close("score_max", scores.iter().copied().fold(f64::MIN, f64::max));
    assert_quantiles_match(&s["score_quantiles"], &scores);
    let counts: Vec<u64> =
        s["score_histogram"]["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    assert_eq!(counts.iter().sum::<u64>(), 320);
    assert_eq!(s["score_histogram"]["edges"].as_array().unwrap().len(), counts.len() + 1);
    let err = stderr(&run);
    assert!(err.contains("scores: 320 scored · mean") && err.contains(" p99 "), "{err}");
    assert_eq!(png_size(&png), (1200, 720));

    // The same numbers from the scored file, plus what thresholds keep.
    let (svg, stats2) = (dir.path().join("s.svg"), dir.path().join("stats2.json"));
    let median = s["score_quantiles"]["p50"].as_f64().unwrap();
    let run = skyscore(&[
        "stats",
        p(&out),
        "--keep-above",
        &median.to_string(),
        "--keep-top",
        "25%",
        "--plot",
        p(&svg),
        "--stats-json",
        p(&stats2),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let r = json(&stats2);
    assert_eq!((r["rows"].as_u64(), r["null_scores"].as_u64()), (Some(320), Some(0)));
    for (p, v) in r["score_quantiles"].as_object().unwrap() {
        // Same sketch over the same scores (read back from JSON text: f32 rounding only).
        assert!((v.as_f64().unwrap() - s["score_quantiles"][p].as_f64().unwrap()).abs() < 1e-6, "{p}");
    }
    assert_eq!(r["keep_above"]["rows"].as_u64().unwrap() as usize, scores.iter().filter(|&&v| v > median).count());
    assert_eq!(r["keep_top"]["rows"], 80);
    let mut sorted = scores.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cut = r["keep_top"]["threshold"].as_f64().unwrap();
    assert!(sorted[76] >= cut && cut >= sorted[83], "top-25% cut {cut} near the 80th best score {}", sorted[79]);
    assert!(stderr(&run).contains("--keep-top 25%: keeps 80 rows"), "{}", stderr(&run));
    assert_svg_of_plot_size(&svg);
}

#[test]
fn sql_reports_each_scoring_function() {
    let dir = tempfile::tempdir().unwrap();
    let (stats, svg) = (dir.path().join("stats.json"), dir.path().join("p.svg"));
    let table = format!("sft={}", p(&repo().join("sample_data/sft_sample.parquet")));
    let run = skyscore(&[
        "sql",
        "--model",
        &tiny_llama(),
        "-t",
        &table,
        "--stats-json",
        p(&stats),
        "--plot",
        p(&svg),
        "--no-progress",
        "--format",
        "csv",
        "SELECT count(*) FROM (SELECT skywork_score(instruction, input, output) AS a, \
         skywork_score_chat('[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"' || id || '\"}]') AS b \
         FROM sft WHERE id < 100) WHERE a > -100 AND b > -100",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let s = json(&stats);
    let by_function = s["score_by_function"].as_object().unwrap();
    assert_eq!(by_function["skywork_score"]["score_count"], 100);
    assert_eq!(by_function["skywork_score_chat"]["score_count"], 100);
    assert!(s.get("score_mean").is_none(), "two functions: no single top-level distribution");
    let err = stderr(&run);
    assert!(err.contains("skywork_score: 100 scored") && err.contains("skywork_score_chat: 100 scored"), "{err}");
    assert_svg_of_plot_size(&dir.path().join("p-skywork_score.svg"));
    assert_svg_of_plot_size(&dir.path().join("p-skywork_score_chat.svg"));
}

#[test]
fn bad_stats_and_plot_requests_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("sample_data/sft_sample.jsonl");
    let out = dir.path().join("o.jsonl");
    for (extra, needle) in [
        (vec!["--plot", "x.gif"], "--plot writes .svg or .png files"),
        (vec!["--stats-json", "/nonexistent-dir/s.json"], "the folder /nonexistent-dir does not exist"),
    ] {
        let mut args = vec!["score", "--model", "does/not-matter", "--input", p(&input), "--output", p(&out)];
        args.extend(extra);
        let run = skyscore(&args);
        assert!(!run.status.success());
        assert!(stderr(&run).contains(needle), "{}", stderr(&run));
        assert!(!stderr(&run).contains("panicked"));
    }
    let run = skyscore(&["stats", p(&input)]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("no column `score` (columns: "), "{}", stderr(&run));
    let run = skyscore(&["stats", p(&input), "--column", "instruction"]);
    assert!(stderr(&run).contains("column `instruction` has type Utf8; scores are numbers"), "{}", stderr(&run));
    let run = skyscore(&["stats", p(&input), "--keep-top", "120"]);
    assert!(stderr(&run).contains("a percentage must be in (0, 100]"), "{}", stderr(&run));
}

/// Token lengths in view: the summary, `--stats-json` and `skyscore stats` give the lengths,
/// the truncated rows and the most tokens cut; past 1% truncated, a `--max-length` that keeps
/// 99% whole is suggested, and `--plot-lengths` draws the lengths.
#[test]
fn token_lengths_and_truncation_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("sample_data/sft_sample.parquet");
    let (out, stats, png) = (dir.path().join("s.parquet"), dir.path().join("stats.json"), dir.path().join("l.png"));
    let args = ["--max-length", "256", "--keep-columns", "--stats-json", p(&stats), "--plot-lengths", p(&png)];
    let run = score(&tiny_llama(), &input, &out, &args);
    assert!(run.status.success(), "{}", stderr(&run));
    let lengths = &json(&stats)["token_lengths"];
    let truncated = lengths["truncated_rows"].as_u64().unwrap();
    assert!(truncated > 3, "{lengths}");
    assert!(lengths["max"].as_u64().unwrap() > 256, "lengths before truncation: {lengths}");
    assert!(lengths["max_tokens_cut"].as_u64().unwrap() >= lengths["max"].as_u64().unwrap() - 256, "{lengths}");
    let suggested = lengths["suggested_max_length"].as_u64().unwrap();
    assert!(suggested > 256 && suggested.is_multiple_of(256), "{lengths}");
    let err = stderr(&run);
    assert!(err.contains(&format!("{truncated} of 320 rows")), "{err}");
    assert!(err.contains(&format!("--max-length {suggested} would keep 99% of them whole")), "{err}");
    assert_eq!(png_size(&png), (1200, 720));

    // Read back from the scored file: the counts, the cut lengths (full lengths are not in it).
    let stats2 = dir.path().join("stats2.json");
    let run = skyscore(&["stats", p(&out), "--stats-json", p(&stats2), "--plot-lengths", p(&dir.path().join("l.svg"))]);
    assert!(run.status.success(), "{}", stderr(&run));
    let back = &json(&stats2)["token_lengths"];
    assert_eq!(back["truncated_rows"].as_u64(), Some(truncated));
    assert_eq!(back["max"].as_u64(), Some(256));
    assert_eq!(back["max_tokens_cut"], serde_json::Value::Null);
    assert!(stderr(&run).contains("of unknown full length"), "{}", stderr(&run));

    // With every row whole, no warning.
    let run = score(&tiny_llama(), &input, &dir.path().join("w.jsonl"), &[]);
    assert!(run.status.success() && !stderr(&run).contains("warning"), "{}", stderr(&run));
}

/// `--dtype auto` says what it took and why.
#[test]
fn auto_dtype_says_what_it_chose() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("sample_data/sft_sample.jsonl");
    let stats = dir.path().join("s.json");
    let run =
        score(&tiny_llama(), &input, &dir.path().join("o.jsonl"), &["--dtype", "auto", "--stats-json", p(&stats)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let s = json(&stats);
    let (dtype, reason) = (s["dtype"].as_str().unwrap(), s["dtype_reason"].as_str().unwrap());
    let kernel = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("avx512_bf16"));
    assert_eq!(dtype, if kernel { "bf16" } else { "f32" }, "{reason}");
    assert!(reason.starts_with("auto: ") && stderr(&run).contains(reason), "{}", stderr(&run));
}
