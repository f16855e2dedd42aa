"""The Scorer against the command line: same rows, same scores, same order, same errors."""

from __future__ import annotations

import inspect
import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import skyscore
from conftest import MODELS, SAMPLE, cli_scores, run_cli

def assert_same_scores(got: pa.Table, expected: pa.Table) -> None:
    assert got.column("id").to_pylist() == expected.column("id").to_pylist(), "rows out of order"
    g = got.column("score").to_numpy(zero_copy_only=False)
    e = expected.column("score").to_numpy(zero_copy_only=False)
    assert len(g) == len(e) > 0
    # The command line's scores bit for bit (README): a row's score does not depend on its batch.
    assert g.dtype == e.dtype == np.float32
    assert np.array_equal(g, e), f"{np.sum(g != e)} scores differ, by up to {np.max(np.abs(g - e))}"
    assert got.column("num_tokens").to_pylist() == expected.column("num_tokens").to_pylist()
    assert got.column("truncated").to_pylist() == expected.column("truncated").to_pylist()


@pytest.mark.parametrize("model", sorted(MODELS))
def test_pyarrow_table_gives_the_clis_scores(model, sample):
    scorer = skyscore.Scorer(MODELS[model], store=False)
    got = scorer.score_table(sample)
    assert got.column_names == sample.column_names + ["score", "num_tokens", "truncated"]
    assert_same_scores(got, cli_scores(model)[0])


def test_polars_dataframe_gives_the_clis_scores(llama, sample):
    import polars as pl

    frame = pl.from_arrow(sample)
    got = llama.score_table(frame)
    assert_same_scores(got, cli_scores("tiny-llama")[0])


def test_record_batch_reader_is_scored_batch_by_batch(llama, sample):
    batches = sample.to_batches(max_chunksize=37)
    reader = pa.RecordBatchReader.from_batches(sample.schema, batches)
    out = llama.score_batches(reader)
    sizes, parts = [], []
    for batch in out:
        sizes.append(batch.num_rows)
        parts.append(batch)
    assert sizes == [b.num_rows for b in batches], "one output batch per input batch"
    assert_same_scores(pa.Table.from_batches(parts), cli_scores("tiny-llama")[0])


def test_datafusion_dataframe_is_a_table_too(llama):
    import datafusion

    ctx = datafusion.SessionContext()
    ctx.register_parquet("sft", str(SAMPLE))
    got = llama.score_table(ctx.sql("SELECT * FROM sft ORDER BY id"))
    expected = cli_scores("tiny-llama")[0].sort_by("id")
    assert_same_scores(got, expected)


def test_python_lists_score_like_the_table(llama, sample):
    rows = sample.slice(0, 40)
    scores = llama.score(rows.column("instruction").to_pylist(), rows.column("output").to_pylist(),
                         rows.column("input").to_pylist())
    assert isinstance(scores, pa.FloatArray)
    expected = cli_scores("tiny-llama")[0].column("score").to_pylist()[:40]
    assert scores.to_pylist() == expected


def test_missing_column_is_a_value_error_naming_it(llama, sample):
    with pytest.raises(ValueError, match=r"no column `output`.*columns: id, instruction, input"):
        llama.score_table(sample.drop_columns(["output"]))
    with pytest.raises(ValueError, match=r"no column `response`"):
        llama.score_table(sample, output_column="response")


def test_wrong_column_type_is_a_value_error_naming_it(llama, sample):
    bad = sample.set_column(3, "output", pa.array(range(sample.num_rows), type=pa.int64()))
    with pytest.raises(ValueError, match=r"column `output` has type Int64; expected a string column"):
        llama.score_table(bad)
    with pytest.raises(ValueError, match=r"`outputs` must hold strings"):
        llama.score(["a", "b"], ["c", 3])
    with pytest.raises(ValueError, match=r"differ in length"):
        llama.score(["a", "b"], ["c"])


def test_a_table_with_a_score_column_is_refused(llama, sample):
    with pytest.raises(ValueError, match=r"already has a `score` column"):
        llama.score_table(sample.append_column("score", pa.array([0.0] * sample.num_rows)))


def test_null_rows_are_errors_naming_the_row_or_nulls_when_skipped(llama, sample):
    rows = sample.slice(0, 10).to_pylist()
    rows[3]["instruction"] = None
    rows[5]["input"] = None  # a NULL input is no input, not an error
    table = pa.Table.from_pylist(rows, schema=sample.schema)
    first_id = rows[3]["id"]
    with pytest.raises(ValueError, match=rf"row 3 \(id {first_id}\): column `instruction` is NULL"):
        llama.score_table(table)
    got = llama.score_table(table, skip_invalid=True).column("score").to_pylist()
    expected = cli_scores("tiny-llama")[0].column("score").to_pylist()[:10]
    assert got[3] is None
    rows[5]["input"] = ""
    no_input = llama.score_table(pa.Table.from_pylist([rows[5]], schema=sample.schema)).column("score")[0].as_py()
    assert got[5] == no_input
    for i in (0, 1, 2, 4, 6, 7, 8, 9):
        assert got[i] == expected[i], i


def test_chat_messages_score_like_alpaca_rows(llama):
    expected = llama.score(["What is 2+2?", "Name a color."], ["4", "Blue."]).to_pylist()
    as_dicts = [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        None,
        '[{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]',
    ]
    got = llama.score_chat(as_dicts).to_pylist()
    assert got[0] == expected[0] and got[1] is None and got[2] == expected[1]
    with pytest.raises(ValueError, match=r"messages\[1\] is not a JSON list"):
        llama.score_chat(['[]', '{"role": "user"}'])


def test_stats_have_the_clis_figures(sample):
    scorer = skyscore.Scorer(MODELS["tiny-llama"], store=False)
    scorer.score_table(sample)
    stats, cli = scorer.stats, cli_scores("tiny-llama")[1]
    for key in ("rows", "model_rows", "tokens", "padded_tokens", "truncated_rows", "duplicate_rows", "score_count"):
        assert stats[key] == cli[key], key
    for key in ("score_mean", "score_min", "score_max"):
        assert abs(stats[key] - cli[key]) <= 1e-6, key
    assert stats["token_lengths"]["max"] == cli["token_lengths"]["max"]
    assert stats["dtype"] == "f32" and stats["device"] == "cpu"


def test_the_store_is_shared_with_the_command_line(tmp_path, sample):
    store = tmp_path / "shared.redb"
    out = tmp_path / "cli.parquet"
    done = run_cli("score", "--model", str(MODELS["tiny-qwen3"]), "--input", str(SAMPLE), "--output", str(out),
                   "--keep-columns", "--store", str(store), "--no-progress")
    assert done.returncode == 0, done.stderr
    scorer = skyscore.Scorer(MODELS["tiny-qwen3"], store=store)
    got = scorer.score_table(sample)
    stats = scorer.stats
    assert stats["model_rows"] == 0, "every row the CLI scored comes from the store"
    assert stats["store_hits"] + stats["duplicate_rows"] == sample.num_rows
    assert_same_scores(got, pq.read_table(out))


def test_ctrl_c_raises_keyboard_interrupt_and_keeps_the_scores(tmp_path, sample):
    # Distinct rows enough for several seconds of work.
    rows = []
    for k in range(12):
        for r in sample.to_pylist():
            rows.append({**r, "id": len(rows), "instruction": f"{r['instruction']} ({k})"})
    table = pa.Table.from_pylist(rows, schema=sample.schema)
    scorer = skyscore.Scorer(MODELS["tiny-llama"], store=tmp_path / "store.redb", chunk_rows=256)
    # Python ignores SIGINT when it started with SIGINT ignored (a job started with `&` by a
    # non-interactive shell): install the Ctrl-C handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            scorer.score_table(table)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    stopped_after = time.monotonic() - started
    saved = scorer.stats["committed_rows"]
    assert 0 < saved < len(rows), saved
    assert stopped_after < 10, f"stopped {stopped_after:.1f} s after the start"
    # The scorer still works, and every row saved before Ctrl-C comes from the store.
    before = scorer.stats
    again = scorer.score_table(table)
    after = scorer.stats
    assert again.num_rows == len(rows) and again.column("score").null_count == 0
    assert after["store_hits"] - before["store_hits"] == saved
    assert after["model_rows"] - before["model_rows"] == len(rows) - saved


def test_help_explains_every_argument():
    doc = inspect.getdoc(skyscore.Scorer)
    for name in inspect.signature(skyscore.Scorer.__init__).parameters:
        if name != "self":
            assert f"{name}:" in doc, name
    for method in (skyscore.Scorer.score, skyscore.Scorer.score_table, skyscore.score):
        params = [p for p in inspect.signature(method).parameters if p not in ("self", "options")]
        method_doc = inspect.getdoc(method)
        for p in params:
            assert p in method_doc, f"{method.__name__}: {p}"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_score_job_writes_the_clis_output(tmp_path, suffix):
    out = tmp_path / f"py{suffix}"
    stats = skyscore.score(SAMPLE, out, model=MODELS["tiny-llama"], store=False)
    assert stats["rows"] == 320
    expected = cli_scores("tiny-llama")[0]
    if suffix == ".parquet":
        got = pq.read_table(out)
        assert got.schema.metadata[b"skyscore.model"]
    else:
        import json

        got = pa.Table.from_pylist([json.loads(line) for line in out.read_text().splitlines()])
    assert got.column_names == ["id", "score"]
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    # JSON Lines carry the shortest text of each f32: read back as f32, the same bits.
    got_scores = np.array(got.column("score").to_pylist(), dtype=np.float32)
    assert np.array_equal(got_scores, expected.column("score").to_numpy())
    assert [p for p in os.listdir(tmp_path) if ".skyscore-" in p] == [], "no temporary or lock file left"


def test_score_job_removes_a_dead_writers_temporary_and_keeps_a_live_ones(tmp_path):
    import fcntl

    out = tmp_path / "out.jsonl"
    # A writer killed mid-run: its lock file is there, nobody holds the lock.
    (tmp_path / ".out.skyscore-h-1-0-dead.lock").write_text("")
    (tmp_path / ".out.skyscore-h-1-0-dead.tmp.jsonl").write_text("partial")
    # A writer alive (this process holds its lock, as another process or machine would).
    live_lock = tmp_path / ".out.skyscore-h-2-0-live.lock"
    live_lock.write_text("")
    (tmp_path / ".out.skyscore-h-2-0-live.tmp.jsonl").write_text("still being written")
    fd = os.open(live_lock, os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        skyscore.score(SAMPLE, out, model=MODELS["tiny-llama"], store=False)
    finally:
        os.close(fd)
    left = sorted(p for p in os.listdir(tmp_path) if ".skyscore-" in p)
    assert left == [".out.skyscore-h-2-0-live.lock", ".out.skyscore-h-2-0-live.tmp.jsonl"]
    assert len(out.read_text().splitlines()) == 320


def test_score_job_keeps_no_partial_output_on_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": null, "output": "c"}\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=r"row 1: column `instruction` is NULL"):
        skyscore.score(bad, out, model=MODELS["tiny-llama"], store=False)
    assert os.listdir(tmp_path) == ["bad.jsonl"]
