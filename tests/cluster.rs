//! `skyscore cluster` + `skyscore sql --cluster` on loopback: a scheduler and two executors as
//! child processes on free 127.0.0.1 ports, scoring the sample split into several Parquet files
//! (one task each, so both executors get work). Every wait is bounded; children die with the
//! test.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{model_dir, p, repo, skyscore, stderr};

const SCORE: &str = "skywork_score(instruction, input, output)";

/// A child process killed when dropped.
struct Proc(Child);

impl Proc {
    /// SIGTERM, then whether the process ended within `timeout`.
    fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.0.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Executor {
    proc: Proc,
    stats: PathBuf,
    log: PathBuf,
}

impl Executor {
    /// Rows the model scored on this executor so far (its `--stats-json`).
    fn model_rows(&self) -> usize {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        json["model_rows"].as_u64().unwrap_or(0) as usize
    }
}

struct Cluster {
    executors: Vec<Executor>,
    url: String,
    scheduler: Proc,
}

impl Cluster {
    /// A scheduler and `n` executors serving tiny-llama, each running one task at a time.
    fn start(dir: &Path, n: usize) -> Self {
        // Ballista's and DataFusion's scratch files go under `dir`, removed with it even when
        // the processes are killed.
        let mut scheduler = common::command()
            .args(["cluster", "scheduler", "--bind", "127.0.0.1:0", "--executor-timeout", "3"])
            .env("TMPDIR", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = scheduler.stdout.take().unwrap();
        let scheduler = Proc(scheduler);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the scheduler says where it listens");
        let address = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(line.starts_with("skyscore scheduler listening on 127.0.0.1:"), "{line}");

        let executors = (0..n)
            .map(|i| {
                let (stats, log) = (dir.join(format!("executor{i}.json")), dir.join(format!("executor{i}.log")));
                let child = common::command()
                    .args(["cluster", "executor", "--scheduler", &address])
                    .args(["--bind", &format!("127.0.0.1:{}", free_port())])
                    .args(["--grpc-port", &free_port().to_string()])
                    .args(["--concurrent-tasks", "1", "--heartbeat-interval", "1"])
                    .args(["--work-dir", p(&dir.join(format!("executor{i}-work")))])
                    .env("TMPDIR", dir)
                    .args(["--model", p(&model_dir("tiny-llama")), "--no-store", "--stats-json", p(&stats)])
                    .env("RUST_LOG", "warn,ballista_executor=info")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap();
                Executor { proc: Proc(child), stats, log }
            })
            .collect::<Vec<_>>();
        for e in &executors {
            wait_for("an executor to register", Duration::from_secs(60), || {
                std::fs::read_to_string(&e.log).unwrap_or_default().contains("Executor registration succeed")
            });
        }
        Cluster { executors, url: format!("df://{address}"), scheduler }
    }

    fn model_rows(&self) -> usize {
        self.executors.iter().map(Executor::model_rows).sum()
    }

    /// `skyscore sql --cluster URL --model tiny-llama -t sft=TABLE ARGS...`
    fn sql(&self, table: &Path, args: &[&str]) -> Output {
        let model = model_dir("tiny-llama");
        let mut all = vec!["sql", "--cluster", &self.url, "--model", p(&model), "-t"];
        let table = format!("sft={}", p(table));
        all.push(&table);
        all.extend_from_slice(args);
        skyscore(&all)
    }
}

/// Copies of the sample as a folder of Parquet files, 4 of 80 rows per copy (copies other than
/// 0 get distinct ids and instructions: new rows for the model).
fn split_sample(dir: &Path, copies: std::ops::Range<usize>) -> PathBuf {
    let table = dir.join(format!("sft-{}-{}", copies.start, copies.end));
    std::fs::create_dir_all(&table).unwrap();
    let sample = repo().join("sample_data/sft_sample.parquet");
    for copy in copies {
        for part in 0..4 {
            let file = table.join(format!("part-{copy}-{part}.parquet"));
            let sql = format!(
                "COPY (SELECT id + {offset} AS id, concat(instruction, '{suffix}') AS instruction, input, output \
                 FROM sft WHERE id % 4 = {part}) TO '{}'",
                p(&file),
                offset = copy * 1000,
                suffix = if copy == 0 { String::new() } else { format!(" (copy {copy})") },
            );
            let run = skyscore(&["sql", "--no-store", "-t", &format!("sft={}", p(&sample)), &sql]);
            assert!(run.status.success(), "{}", stderr(&run));
        }
    }
    table
}

/// The child's output, or a failed test (and a killed child) after `timeout`.
fn wait_with_timeout(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("no answer from the cluster after {timeout:?}");
        }
    }
}

/// `id,score` CSV printed by `sql --format csv` → id → score.
fn scores_by_id(out: &Output) -> BTreeMap<i64, f64> {
    assert!(out.status.success(), "{}", stderr(out));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut scores = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let (id, score) = line.split_once(',').unwrap();
        let previous = scores.insert(id.parse().unwrap(), score.parse().unwrap());
        assert!(previous.is_none(), "id {id} came back twice");
    }
    scores
}

#[test]
fn a_cluster_scores_like_a_local_run_and_filters_before_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (table, other_rows) = (split_sample(dir.path(), 0..1), split_sample(dir.path(), 1..2));
    let cluster = Cluster::start(dir.path(), 2);
    let query = format!("SELECT id, {SCORE} AS score FROM sft");
    let csv = ["--format", "csv", "--maxrows", "inf"];

    // Every row once, each score equal to a local run's.
    let mut args = vec![query.as_str()];
    args.extend_from_slice(&csv);
    let remote = scores_by_id(&cluster.sql(&table, &args));
    let model = model_dir("tiny-llama");
    let mut local_args = vec!["sql", "--no-store", "--model", p(&model)];
    let local_table = format!("sft={}", p(&table));
    local_args.extend(["-t", &local_table, &query]);
    local_args.extend_from_slice(&csv);
    let local = scores_by_id(&skyscore(&local_args));
    assert_eq!(local.len(), 320);
    assert_eq!(remote.keys().collect::<Vec<_>>(), local.keys().collect::<Vec<_>>());
    let worst = local.iter().map(|(id, s)| (s - remote[id]).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-6, "max |cluster - local| = {worst}");
    assert_eq!(cluster.model_rows(), 320, "each row scored once, over all executors");

    // A filter on another column, over rows no executor has seen: the model sees only the
    // rows that pass.
    let filtered = format!("{query} WHERE id % 3 = 0");
    let mut args = vec![filtered.as_str()];
    args.extend_from_slice(&csv);
    let remote = scores_by_id(&cluster.sql(&other_rows, &args));
    let passing = local.keys().filter(|id| (*id + 1000) % 3 == 0).count();
    assert!(passing > 100 && passing < 120);
    assert_eq!(remote.len(), passing);
    assert_eq!(cluster.model_rows() - 320, passing, "rows scored for {passing} results of 320");

    // COPY to Parquet: every row with its score, the file where the client said.
    let out = dir.path().join("scored.parquet");
    let copy = format!("COPY (SELECT id, {SCORE} AS score FROM sft) TO '{}'", p(&out));
    let run = cluster.sql(&table, &[&copy]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(common::count_rows_ids_scores(&out), "320,320,320");
    // The file names the model that scored it, as a local run's does.
    let kv = common::parquet_metadata(&out);
    let get = |k: &str| kv.get(k).cloned();
    assert_eq!(get("skyscore.architecture").as_deref(), Some("LlamaForSequenceClassification"));
    assert_eq!(get("skyscore.max_length").as_deref(), Some("4096"));
    assert!(get("skyscore.checkpoint_sha256").is_some_and(|h| h.len() == 64));
    assert!(get("skyscore.template_sha256").is_some_and(|h| h.len() == 64));
    assert!(get("skyscore.version").is_some());
    // A partitioned COPY into a folder holding the user's file: the file stays, the executors'
    // files join it once the query has succeeded.
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    std::fs::write(parts.join("keep.txt"), "the user's file").unwrap();
    let copy = format!(
        "COPY (SELECT id, id % 2 AS g, {SCORE} AS score FROM sft) TO '{}' STORED AS PARQUET PARTITIONED BY (g)",
        p(&parts)
    );
    let run = cluster.sql(&table, &[&copy]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(std::fs::read_to_string(parts.join("keep.txt")).unwrap(), "the user's file");
    let counts: Vec<String> = (0..2).map(|g| common::count_rows_ids_scores(&parts.join(format!("g={g}")))).collect();
    assert_eq!(counts, ["160,160,160", "160,160,160"], "every row once, in its partition");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".skyscore-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary or lock files left: {leftovers:?}");

    // --output with ORDER BY: the same top rows as the local run (ties broken by id).
    let top = dir.path().join("top.csv");
    let ordered = format!("SELECT id, {SCORE} AS score FROM sft ORDER BY score DESC, id LIMIT 10");
    let run = cluster.sql(&table, &["--output", p(&top), &ordered]);
    assert!(run.status.success(), "{}", stderr(&run));
    let written = std::fs::read_to_string(&top).unwrap();
    // (Every field is quoted: DataFusion 55's plan codec swaps the CSV quote styles.)
    let ids: Vec<i64> = written
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().trim_matches('"').parse().expect(&written))
        .collect();
    let mut by_score: Vec<(&i64, &f64)> = local.iter().collect();
    by_score.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let expected: Vec<i64> = by_score.iter().take(10).map(|(id, _)| **id).collect();
    assert_eq!(ids, expected);
}

#[test]
fn executors_serving_another_model_fail_the_query_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let table = split_sample(dir.path(), 0..1);
    let cluster = Cluster::start(dir.path(), 1);
    let query = format!("SELECT sum({SCORE}) FROM sft");
    let run = cluster.sql(&table, &["--max-length", "2048", &query]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("failed: skywork_score: scoring failed: this scorer's model is not the one the query expects: skyscore.max_length: expected 2048, here 4096"),
        "{err}"
    );
    let model = model_dir("tiny-qwen3");
    let run = skyscore(&[
        "sql",
        "--cluster",
        &cluster.url,
        "--model",
        p(&model),
        "-t",
        &format!("sft={}", p(&table)),
        &query,
    ]);
    let err = stderr(&run);
    assert!(
        !run.status.success()
            && err.contains(
                "skyscore.architecture: expected Qwen3ForSequenceClassification, here LlamaForSequenceClassification"
            ),
        "{err}"
    );
    assert_eq!(cluster.model_rows(), 0, "nothing was scored with the wrong model");

    // No scheduler at the address: said at once.
    let model = model_dir("tiny-llama");
    let nowhere = format!("df://127.0.0.1:{}", free_port());
    let run = skyscore(&["sql", "--cluster", &nowhere, "--model", p(&model), &query]);
    assert!(!run.status.success() && stderr(&run).contains("no scheduler answers at 127.0.0.1:"), "{}", stderr(&run));

    // SIGTERM ends the cluster's processes.
    let mut cluster = cluster;
    for executor in &mut cluster.executors {
        assert!(executor.proc.terminate(Duration::from_secs(20)), "the executor ends on SIGTERM");
    }
    assert!(cluster.scheduler.terminate(Duration::from_secs(20)), "the scheduler ends on SIGTERM");
}

#[test]
fn a_query_survives_an_executor_killed_while_it_scores() {
    let dir = tempfile::tempdir().unwrap();
    let table = split_sample(dir.path(), 0..8);
    let cluster = Cluster::start(dir.path(), 2);
    let model = model_dir("tiny-llama");
    let client = common::command()
        .env("TMPDIR", dir.path())
        .args(["sql", "--cluster", &cluster.url, "--model", p(&model), "-t", &format!("sft={}", p(&table))])
        .args(["--format", "csv", &format!("SELECT count(*), count(DISTINCT id), count({SCORE}) FROM sft")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut executors = cluster.executors;
    // Kill the first executor that has scored something while the query still runs.
    let mut victim = None;
    wait_for("an executor to score rows", Duration::from_secs(120), || {
        victim = executors.iter().position(|e| e.model_rows() > 0);
        victim.is_some()
    });
    let killed = executors.remove(victim.unwrap());
    assert!(killed.model_rows() < 2560, "the query finished before the kill; the test needs a longer one");
    drop(killed);
    let out = wait_with_timeout(client, Duration::from_secs(240));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2560,2560,2560"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(executors[0].model_rows() > 0);
}
