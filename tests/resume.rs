//! Crash safety: the score store makes a rerun after a kill -9 (at any point) or a Ctrl-C run
//! the model only on rows it never scored, with output identical to an uninterrupted run's;
//! outputs are never lost or mixed up on the way.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn tiny_llama() -> String {
    p(&model_dir("tiny-llama")).to_string()
}

/// The sample rows six times over, each copy made distinct (the store would answer repeats):
/// 1,920 rows, long enough for a kill to land in the middle of the run.
fn big_input(dir: &Path) -> PathBuf {
    let rows = std::fs::read_to_string(repo().join("sample_data/sft_sample.jsonl")).unwrap();
    let mut out = String::new();
    let mut id = 0;
    for copy in 0..6 {
        for line in rows.lines().filter(|l| !l.trim().is_empty()) {
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            row["id"] = id.into();
            let instruction = format!("{} (#{copy})", row["instruction"].as_str().unwrap());
            row["instruction"] = instruction.into();
            out.push_str(&row.to_string());
            out.push('\n');
            id += 1;
        }
    }
    let path = dir.join("big.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

const BIG_ROWS: u64 = 1920;

/// A skyscore run in the background whose engine logs each device batch and each commit to the
/// store (debug level), so a test can act on an observed event (batches scored, scores
/// committed) instead of a fraction of a measured time, which a loaded machine can outrun.
/// Killed when dropped.
struct Running {
    child: Child,
    /// One message per "device batch scored" line, as they come.
    batches: std::sync::mpsc::Receiver<()>,
    /// `committed` of the latest "scores committed to the store" line.
    committed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stderr: Option<std::thread::JoinHandle<String>>,
    _isolated: Isolated,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut isolated = command();
        let mut child = isolated
            .args(args)
            .env("RUST_LOG", "skyscore_engine=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skyscore");
        let (tx, batches) = std::sync::mpsc::channel();
        let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = committed.clone();
        let pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut text = String::new();
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("device batch scored") {
                    let _ = tx.send(());
                }
                if line.contains("scores committed to the store") {
                    let n = line.split("committed=").nth(1).and_then(|v| v.split_whitespace().next()?.parse().ok());
                    seen.store(n.expect("a committed count"), std::sync::atomic::Ordering::SeqCst);
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Self { child, batches, committed, stderr: Some(stderr), _isolated: isolated }
    }

    /// Waits (at most `limit`) until `n` device batches were scored.
    fn wait_for_batches(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            self.batches.recv_timeout(left).unwrap_or_else(|e| panic!("waiting for {n} batches: {e}"));
        }
    }

    /// Waits (at most `limit`) until at least `n` scores are committed to the store; returns how
    /// many are.
    fn wait_for_committed(&self, n: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let committed = self.committed.load(std::sync::atomic::Ordering::SeqCst);
            if committed >= n {
                return committed;
            }
            assert!(Instant::now() < deadline, "waiting for {n} committed scores (have {committed})");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (`-INT`, `-TERM`, `-KILL`) through kill(1): no libc in the tests.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {signal}");
    }

    /// Waits (at most `limit`) for the process to end: its exit code and stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the run did not end within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = self.stderr.take().expect("finished once").join().unwrap();
        (status.code(), text)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const WAIT: Duration = Duration::from_secs(300);

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn score_args<'a>(out: &'a Path, store: &'a Path, stats: &'a Path, model: &'a str, input: &'a Path) -> Vec<&'a str> {
    vec![
        "score",
        "--model",
        model,
        "--input",
        p(input),
        "--output",
        p(out),
        "--store",
        p(store),
        "--stats-json",
        p(stats),
        "--no-progress",
    ]
}

/// Files in `dir` named like skyscore's temporary outputs.
fn temporary_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".skyscore-"))
        .collect()
}

#[test]
fn score_resumes_after_kill_9_with_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama();
    let input = big_input(dir.path());
    // The uninterrupted run, without a store.
    let full = dir.path().join("full.jsonl");
    let run = score(&model, &input, &full, &["--no-store"]);
    assert!(run.status.success(), "{}", stderr(&run));

    // Killed after a few device batches, and after about half of them (1,920 rows in batches of
    // at most 16: at least 120 batches).
    for (k, batches) in [3, 60].into_iter().enumerate() {
        let store = dir.path().join(format!("store-{k}.redb"));
        let (out, stats) = (dir.path().join(format!("out-{k}.jsonl")), dir.path().join(format!("s-{k}.json")));
        let running = Running::start(&score_args(&out, &store, &stats, &model, &input));
        running.wait_for_batches(batches, WAIT);
        let committed = running.wait_for_committed(1, WAIT);
        running.signal("-KILL");
        let (code, _) = running.finish(WAIT);
        assert_eq!(code, None, "killed by a signal");
        assert!(committed > 0, "batches were committed before the kill");
        assert!(!out.exists(), "a killed run leaves no output that looks finished");

        let rerun = skyscore(&score_args(&out, &store, &stats, &model, &input));
        assert!(rerun.status.success(), "{}", stderr(&rerun));
        assert_same_scores(&jsonl_id_scores(&out), &jsonl_id_scores(&full));
        let s = json(&stats);
        let (model_rows, from_store) = (s["model_rows"].as_u64().unwrap(), s["store_hits"].as_u64().unwrap());
        assert_eq!(model_rows + from_store, BIG_ROWS, "{s}");
        assert!(from_store >= committed, "every score committed before the kill is reused: {s}");
        assert!(model_rows < BIG_ROWS, "the rerun did not score everything again: {s}");
        assert!(
            temporary_files(dir.path()).is_empty(),
            "stale temporary files are cleaned: {:?}",
            temporary_files(dir.path())
        );
        // The store opens cleanly and holds every row now: a third run scores nothing.
        let third = skyscore(&score_args(&out, &store, &stats, &model, &input));
        assert!(third.status.success());
        assert_eq!(json(&stats)["model_rows"], 0);
        assert_same_scores(&jsonl_id_scores(&out), &jsonl_id_scores(&full));
    }
}

#[test]
fn sql_copy_resumes_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama();
    let table = format!("sft={}", p(&big_input(dir.path())));
    let copy = |target: &Path| {
        format!(
            "COPY (SELECT id, skywork_score(instruction, input, output) AS score FROM sft ORDER BY id) TO '{}' STORED AS PARQUET",
            p(target)
        )
    };
    let store = dir.path().join("store.redb");
    let (full, out) = (dir.path().join("full.parquet"), dir.path().join("out.parquet"));
    let run = skyscore(&["sql", "--model", &model, "-t", &table, "--no-store", &copy(&full)]);
    assert!(run.status.success(), "{}", stderr(&run));

    let sql = copy(&out);
    let args = ["sql", "--model", &model, "-t", &table, "--store", p(&store), "--no-progress", &sql];
    let running = Running::start(&args);
    running.wait_for_batches(10, WAIT);
    let committed = running.wait_for_committed(1, WAIT);
    running.signal("-KILL");
    running.finish(WAIT);
    assert!(!out.exists(), "no half-written target");
    let stats = dir.path().join("s.json");
    let mut rerun_args = args.to_vec();
    rerun_args.extend(["--stats-json", p(&stats)]);
    let rerun = skyscore(&rerun_args);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert_same_scores(&read_id_scores(&out), &read_id_scores(&full));
    let s = json(&stats);
    let (model_rows, from_store) = (s["model_rows"].as_u64().unwrap(), s["store_hits"].as_u64().unwrap());
    assert_eq!(model_rows + from_store, BIG_ROWS, "{s}");
    assert!(from_store >= committed && committed > 0, "the killed COPY's scores are reused: {s}");
    assert!(model_rows < BIG_ROWS, "{s}");
    assert!(temporary_files(dir.path()).is_empty());
}

/// The same rows with the same scores, bit for bit: a row's score does not depend on how its
/// batch was formed, and a resumed run batches the remaining rows differently.
fn assert_same_scores(resumed: &[(i64, f32)], full: &[(i64, f32)]) {
    assert_eq!(resumed.len(), full.len());
    for ((id, a), (full_id, b)) in resumed.iter().zip(full) {
        assert_eq!(id, full_id, "same rows in the same order");
        assert_eq!(a.to_bits(), b.to_bits(), "id {id}: resumed {a} vs uninterrupted {b}");
    }
}

fn read_id_scores(path: &Path) -> Vec<(i64, f32)> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float32Type, Int64Type};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap().build().unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let scores = batch.column(1).as_primitive::<Float32Type>();
        out.extend((0..batch.num_rows()).map(|i| (ids.value(i), scores.value(i))));
    }
    out
}

fn jsonl_id_scores(path: &Path) -> Vec<(i64, f32)> {
    read_jsonl::<serde_json::Value>(path)
        .iter()
        .map(|l| (l["id"].as_i64().unwrap(), l["score"].as_f64().unwrap() as f32))
        .collect()
}

#[test]
fn ctrl_c_and_sigterm_stop_cleanly_and_say_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama();
    let input = big_input(dir.path());
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let store = dir.path().join(format!("store{sig}.redb"));
        let (out, stats) = (dir.path().join(format!("out{sig}.jsonl")), dir.path().join("s.json"));
        // An earlier result at the target stays as it was until a complete one replaces it.
        std::fs::write(&out, "earlier result\n").unwrap();
        let running = Running::start(&score_args(&out, &store, &stats, &model, &input));
        running.wait_for_batches(3, WAIT);
        running.signal(sig);
        let (status, err) = running.finish(Duration::from_secs(60));
        assert_eq!(status, Some(code), "{err}");
        assert!(err.contains("run the same command again to resume"), "{err}");
        assert!(err.contains("were scored and saved in the score store"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier result\n");
        assert!(temporary_files(dir.path()).is_empty(), "{:?}", temporary_files(dir.path()));
        let rerun = skyscore(&score_args(&out, &store, &stats, &model, &input));
        assert!(rerun.status.success(), "{}", stderr(&rerun));
        assert!(json(&stats)["store_hits"].as_u64().unwrap() > 0, "what ran before the signal was kept");
    }
    // Without a store, the message does not promise a resume.
    let out = dir.path().join("no-store.jsonl");
    let running =
        Running::start(&["score", "--model", &model, "--input", p(&input), "--output", p(&out), "--no-store"]);
    running.wait_for_batches(3, WAIT);
    running.signal("-INT");
    let (status, err) = running.finish(Duration::from_secs(60));
    assert_eq!(status, Some(130), "{err}");
    assert!(err.contains("No score store was used"), "{err}");
    assert!(!err.contains("resume"), "{err}");
}

/// Two processes score into one store at the same time: neither waits for the other or runs
/// without the store (each would say so), and afterwards the store answers every row of both.
#[test]
fn two_processes_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama();
    let big = big_input(dir.path());
    let lines: Vec<String> = std::fs::read_to_string(&big).unwrap().lines().map(str::to_string).collect();
    // Overlapping halves: rows [0, 1200) and [720, 1920).
    let (first_rows, second_rows) = (dir.path().join("first.jsonl"), dir.path().join("second.jsonl"));
    std::fs::write(&first_rows, lines[..1200].join("\n")).unwrap();
    std::fs::write(&second_rows, lines[720..].join("\n")).unwrap();
    let store = dir.path().join("shared.redb");
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let (sa, sb) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let first = Running::start(&score_args(&a, &store, &sa, &model, &first_rows));
    // The second starts once the first holds the store and has committed scores.
    first.wait_for_batches(2, WAIT);
    let second = Running::start(&score_args(&b, &store, &sb, &model, &second_rows));
    for (name, run) in [("first", first), ("second", second)] {
        let (code, err) = run.finish(WAIT);
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(!err.contains("held by another program"), "{name} ran without the store: {err}");
        assert!(!err.contains("cannot write to the score store"), "{name}: {err}");
    }
    let (stats_a, stats_b) = (json(&sa), json(&sb));
    for s in [&stats_a, &stats_b] {
        assert_eq!(s["model_rows"].as_u64().unwrap() + s["store_hits"].as_u64().unwrap(), s["rows"].as_u64().unwrap());
    }
    // Both wrote: a third run over every row finds all of them in the store.
    let (out, stats) = (dir.path().join("all.jsonl"), dir.path().join("all.json"));
    let all = skyscore(&score_args(&out, &store, &stats, &model, &big));
    assert!(all.status.success(), "{}", stderr(&all));
    let s = json(&stats);
    assert_eq!((s["model_rows"].as_u64(), s["store_hits"].as_u64()), (Some(0), Some(BIG_ROWS)), "{s}");
    let info = skyscore(&["store", "info", "--store", p(&store)]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains(&format!(": {BIG_ROWS} scores")), "{text}");
}

#[test]
fn identical_rows_run_the_model_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("same.jsonl");
    let line = "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi!\"}\n";
    std::fs::write(&input, line.repeat(500)).unwrap();
    let (out, stats) = (dir.path().join("o.jsonl"), dir.path().join("s.json"));
    let run = score(&tiny_llama(), &input, &out, &["--stats-json", p(&stats), "--chunk-rows", "128"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let s = json(&stats);
    assert_eq!(s["model_rows"], 1, "{s}");
    assert_eq!(s["store_hits"].as_u64().unwrap() + s["duplicate_rows"].as_u64().unwrap(), 499, "{s}");
    let scores: Vec<f64> = read_jsonl::<serde_json::Value>(&out).iter().map(|l| l["score"].as_f64().unwrap()).collect();
    assert_eq!(scores.len(), 500);
    assert!(scores.iter().all(|&x| x == scores[0]));
}

#[test]
fn store_info_and_clear_by_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let input = dir.path().join("rows.jsonl");
    std::fs::write(
        &input,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": \"d\"}\n",
    )
    .unwrap();
    for model in ["tiny-llama", "tiny-qwen3"] {
        let out = dir.path().join(format!("{model}.jsonl"));
        let m = p(&model_dir(model)).to_string();
        let run = score(&m, &input, &out, &["--store", p(&store)]);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let info = skyscore(&["store", "info", "--store", p(&store)]);
    let text = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(text.contains(": 4 scores"), "{text}");
    assert_eq!(text.lines().filter(|l| l.trim_start().starts_with("2  skyscore.model=")).count(), 2, "{text}");
    let qwen = p(&model_dir("tiny-qwen3")).to_string();
    let clear = skyscore(&["store", "clear", "--model", &qwen, "--store", p(&store)]);
    assert!(String::from_utf8_lossy(&clear.stdout).contains("removed 2 scores of model"), "{}", stderr(&clear));
    let info = skyscore(&["store", "info", "--store", p(&store)]);
    let text = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(text.contains(": 2 scores") && text.contains("tiny-llama") && !text.contains("tiny-qwen3"), "{text}");
}

/// A store damaged on disk: a run stops with an error naming the file and the way out, never a
/// panic or a wrong score; `store check` says so with a non-zero exit; `store repair` keeps the
/// damaged file beside a fresh one, and the next run scores again from there.
#[test]
fn a_damaged_store_is_named_checked_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("scores.redb");
    let input = repo().join("sample_data/sft_sample.parquet");
    let out = dir.path().join("out.jsonl");
    let model = model_dir("tiny-llama");
    let stats = dir.path().join("s.json");
    let run = || score(p(&model), &input, &out, &["--store", p(&store), "--no-progress", "--stats-json", p(&stats)]);
    assert!(run().status.success());
    let check = skyscore(&["store", "check", "--store", p(&store)]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("pages intact; 320 entries, 0 damaged"));

    // Garbage over every page but the header: the pages a run reads are certainly hit (damage
    // in the middle of the file alone may land on pages no commit uses any more).
    let mut bytes = std::fs::read(&store).unwrap();
    bytes[4096..].fill(0x67);
    std::fs::write(&store, &bytes).unwrap();

    let failed = run();
    let err = stderr(&failed);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&format!("the score store {} is damaged", store.display())), "{err}");
    assert!(err.contains("skyscore store repair") && err.contains("--no-store"), "{err}");
    let check = skyscore(&["store", "check", "--store", p(&store)]);
    assert_eq!(check.status.code(), Some(1), "store check fails on the damage: {}", stderr(&check));
    assert!(stderr(&check).contains("is damaged"), "{}", stderr(&check));

    let repair = skyscore(&["store", "repair", "--store", p(&store)]);
    assert!(repair.status.success(), "{}", stderr(&repair));
    assert!(
        String::from_utf8_lossy(&repair.stdout).contains(": damaged ("),
        "{}",
        String::from_utf8_lossy(&repair.stdout)
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("scores.redb.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept beside the fresh store");
    assert!(std::fs::read(dir.path().join(&kept[0])).unwrap() == bytes, "kept as it was");
    let again = run();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(json(&stats)["model_rows"], 320, "nothing was readable: every row is scored again");
    let check = skyscore(&["store", "check", "--store", p(&store)]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("pages intact; 320 entries, 0 damaged"));
}

/// The case of the issue: `store repair` on a store a job was writing renamed the live store
/// away, and `store clear` emptied it under the job. Now each upkeep command is refused while
/// another process (here this test, opening the store as a scoring job does) uses the store,
/// and nothing is renamed, created or removed; once the job is gone they run.
#[test]
fn upkeep_of_a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("scores.redb");
    let input = repo().join("sample_data/sft_sample.parquet");
    let out = dir.path().join("out.jsonl");
    let scored = score(&tiny_llama(), &input, &out, &["--store", p(&store), "--no-progress"]);
    assert!(scored.status.success(), "{}", stderr(&scored));
    let listing = || {
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    let job = skyscore_engine::store::ScoreStore::open(&store, std::time::Duration::ZERO).unwrap().expect("free");
    let before = (listing(), std::fs::read(&store).unwrap());
    for command in ["clear", "check", "repair"] {
        let run = skyscore(&["store", command, "--store", p(&store)]);
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains("in use by another skyscore process; stop it first"), "{command}: {err}");
        assert!((listing(), std::fs::read(&store).unwrap()) == before, "{command} changed nothing");
    }
    // Reading beside a job is fine.
    let info = skyscore(&["store", "info", "--store", p(&store)]);
    assert!(String::from_utf8_lossy(&info.stdout).contains(": 320 scores"), "{}", stderr(&info));
    assert_eq!(job.len().unwrap(), 320);
    drop(job);
    let repair = skyscore(&["store", "repair", "--store", p(&store)]);
    assert!(repair.status.success(), "{}", stderr(&repair));
    assert!(String::from_utf8_lossy(&repair.stdout).contains("no damage found (320 scores); nothing was changed"));
    let clear = skyscore(&["store", "clear", "--store", p(&store)]);
    assert!(String::from_utf8_lossy(&clear.stdout).contains("removed 320 scores"), "{}", stderr(&clear));
}
