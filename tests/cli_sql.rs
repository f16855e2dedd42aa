//! `skyscore sql` end to end: the user's queries, model rows = distinct rows, Parquet out with
//! metadata, lazy model loading, and clean errors.

mod common;

use std::path::Path;

use common::*;

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model() -> String {
    model_dir("tiny-llama").to_str().unwrap().to_string()
}

fn sample() -> String {
    format!("sft={}", repo().join("sample_data/sft_sample.parquet").display())
}

/// The query of the issue: WHERE and SELECT both call the model; it runs once per distinct row
/// and the printed scores equal `skyscore score`'s.
#[test]
fn threshold_query_runs_the_model_once_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let stats_path = dir.path().join("stats.json");
    let run = skyscore(&[
        "sql",
        "--model",
        &model(),
        "-t",
        &sample(),
        "--format",
        "csv",
        "--stats-json",
        p(&stats_path),
        "SELECT id, skywork_score(instruction, input, output) AS s FROM sft \
         WHERE skywork_score(instruction, input, output) > 0 ORDER BY s DESC LIMIT 10",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let out = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "id,s");
    assert_eq!(lines.len(), 11, "{out}");
    let expected = expected("tiny-llama", "full");
    for line in &lines[1..] {
        let (id, score) = line.split_once(',').unwrap();
        let id: i64 = id.parse().unwrap();
        let score: f64 = score.parse().unwrap();
        let exp = expected.iter().find(|e| e.id.as_i64() == Some(id)).unwrap().score;
        assert!((score - exp).abs() <= 1e-4, "id {id}: {score} vs {exp}");
    }
    let s = stats(&stats_path);
    assert_eq!(s["model_rows"], 320, "{s}");
    assert!(s["rows"].as_u64().unwrap() > 320, "{s}");
    for key in ["rows", "model_rows", "tokens", "padded_tokens", "truncated_rows", "wall_s", "tokens_per_s"] {
        assert!(s.get(key).is_some(), "{key}");
    }
    assert!(stderr(&run).contains("320 scored by the model"), "{}", stderr(&run));
    // The same run description as `skyscore score` writes (it used to be "" here).
    assert_eq!((s["dtype"].as_str(), s["device"].as_str()), (Some("f32"), Some("cpu")), "{s}");
}

#[test]
fn copy_to_parquet_carries_metadata_and_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scored.parquet");
    let run = skyscore(&[
        "sql",
        "--model",
        &model(),
        "-t",
        &sample(),
        &format!(
            "COPY (SELECT *, skywork_score(instruction, input, output) AS score FROM sft) TO '{}' STORED AS PARQUET",
            p(&out)
        ),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let file = std::fs::File::open(&out).unwrap();
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use datafusion::parquet::file::reader::FileReader;
    assert_eq!(reader.metadata().file_metadata().num_rows(), 320);
    let kv = parquet_metadata(&out);
    let get = |k: &str| kv.get(k).cloned();
    assert_eq!(get("skyscore.model").as_deref(), Some(model().as_str()));
    assert_eq!(get("skyscore.max_length").as_deref(), Some("4096"));
    assert_eq!(get("skyscore.truncation_side").as_deref(), Some("right"));
    assert!(get("skyscore.template_sha256").is_some_and(|h| h.len() == 64));
    assert!(get("skyscore.version").is_some());

    // Every row was written once, with its score, and reads back through SQL.
    assert_eq!(common::count_rows_ids_scores(&out), "320,320,320");
}

#[test]
fn output_flag_streams_a_query_to_jsonl_and_the_model_stays_unloaded_without_udfs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("top.jsonl");
    let run = skyscore(&[
        "sql",
        "--model",
        &model(),
        "-t",
        &sample(),
        "--output",
        p(&out),
        "SELECT id, skywork_score(instruction, output) AS s FROM sft WHERE id < 5 ORDER BY id",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let rows: Vec<serde_json::Value> = read_jsonl(&out);
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["id"], 0);
    assert!(stderr(&run).contains("wrote 5 rows"), "{}", stderr(&run));

    // No UDF, no model: a nonexistent model is never touched.
    let run = skyscore(&["sql", "--model", "/nonexistent/model", "-t", &sample(), "SELECT count(*) FROM sft"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(String::from_utf8_lossy(&run.stdout).contains("320"));
}

#[test]
fn preference_check_in_sql() {
    // chosen/rejected pairs: the share of pairs the reward model orders correctly.
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prompt\": \"Say hi.\", \"chosen\": \"Hi!\", \"rejected\": \"Go away.\"}\n\
         {\"prompt\": \"Translate to French: Good morning\", \"chosen\": \"Bonjour\", \"rejected\": \"Hola\"}\n",
    )
    .unwrap();
    let run = skyscore(&[
        "sql", "--model", &model(), "-t", &format!("pairs={}", p(&pairs)), "--format", "csv",
        "SELECT count(*) AS pairs, avg(CASE WHEN skywork_score(prompt, chosen) > skywork_score(prompt, rejected) THEN 1.0 ELSE 0.0 END) AS accuracy FROM pairs",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("2,")), "{out}");
}

#[test]
fn sql_errors_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["sql", "-t", "bad"], "expected NAME=PATH"),
        (vec!["sql", "-t", "x=/nonexistent.parquet", "SELECT 1"], "does not exist"),
        (vec!["sql", "SELECT * FROM missing_table"], "missing_table"),
        (
            vec!["sql", "--model", "/nonexistent/model", "SELECT skywork_score('a', 'b')"],
            "model directory /nonexistent/model does not exist",
        ),
        (vec!["sql", "SELECT skywork_score('a', 1, 'b')"], "argument `input` must be a string, got Int64"),
        (
            vec!["sql", "SELECT skywork_score('a')"],
            "skywork_score takes (instruction, input, output) or (instruction, output), got 1",
        ),
        (vec!["sql", "SELECT skywork_score_chat('a', 'b')"], "skywork_score_chat takes one argument (messages), got 2"),
    ] {
        let run = skyscore(&args);
        let err = stderr(&run);
        assert!(!err.contains("likely caused by a bug"), "{args:?}: our message, not DataFusion's: {err}");
        assert_eq!(run.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in {err}");
    }
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "SELECT 1;\nSELECT * FROM nope;\n").unwrap();
    let run = skyscore(&["sql", "-f", p(&file)]);
    assert_eq!(run.status.code(), Some(1), "a failing statement in a file fails the run: {}", stderr(&run));
}

/// A script mixing DDL, queries, a COPY (written through a temporary file) and a query of the
/// written file by its path, as in datafusion-cli.
#[test]
fn scripts_create_copy_and_query_files_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.parquet");
    let script = dir.path().join("q.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}';\n\
             COPY (SELECT id, skywork_score(instruction, input, output) AS s FROM t WHERE id < 5) TO '{}' STORED AS PARQUET;\n\
             SELECT count(*) AS n, count(s) AS scored FROM '{}';\n",
            p(&repo().join("sample_data/sft_sample.parquet")),
            p(&out),
            p(&out)
        ),
    )
    .unwrap();
    let run = skyscore(&["sql", "--model", &model(), "--format", "csv", "-f", p(&script)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.lines().any(|l| l == "5,5"), "{stdout}");
}

/// `skyscore sql` batches rows as its partitions deliver them, `skyscore score` by windows of
/// the file: a row's score is the same bits either way, in f32 and in bf16.
#[test]
fn sql_and_score_give_the_same_bits() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float32Type, Int64Type};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let read = |path: &Path| -> Vec<(i64, u32)> {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap().build().unwrap();
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let (ids, scores) =
                (batch.column(0).as_primitive::<Int64Type>(), batch.column(1).as_primitive::<Float32Type>());
            rows.extend((0..batch.num_rows()).map(|i| (ids.value(i), scores.value(i).to_bits())));
        }
        rows.sort();
        rows
    };
    let dir = tempfile::tempdir().unwrap();
    let input = repo().join("sample_data/sft_sample.parquet");
    for dtype in ["f32", "bf16"] {
        let (from_score, from_sql) =
            (dir.path().join(format!("score-{dtype}.parquet")), dir.path().join("sql.parquet"));
        let run = score(&model(), &input, &from_score, &["--dtype", dtype, "--no-store", "--batch-size", "5"]);
        assert!(run.status.success(), "{}", stderr(&run));
        let copy = format!(
            "COPY (SELECT id, skywork_score(instruction, input, output) AS score FROM sft) TO '{}' STORED AS PARQUET",
            p(&from_sql)
        );
        let run = skyscore(&["sql", "--model", &model(), "--dtype", dtype, "--no-store", "-t", &sample(), &copy]);
        assert!(run.status.success(), "{}", stderr(&run));
        let (a, b) = (read(&from_score), read(&from_sql));
        assert_eq!(a.len(), 320);
        assert_eq!(a, b, "{dtype}: score and sql give the same bits");
    }
}
