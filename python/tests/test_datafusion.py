"""The SQL functions in datafusion-python 55, against the command line."""

from __future__ import annotations

import datafusion
import numpy as np
import pytest

import skyscore
import skyscore.datafusion
from conftest import MODELS, SAMPLE, cli_scores


def test_threshold_query_returns_the_clis_rows_scoring_each_row_once():
    expected, cli_stats = cli_scores("tiny-llama")
    threshold = float(np.median(expected.column("score").to_numpy()))
    want = sorted(i for i, s in zip(expected.column("id").to_pylist(), expected.column("score").to_pylist())
                  if s > threshold)

    scorer = skyscore.Scorer(MODELS["tiny-llama"], store=False)
    ctx = datafusion.SessionContext()
    skyscore.datafusion.register(ctx, scorer)
    ctx.register_parquet("sft", str(SAMPLE))
    query = (f"SELECT id, skywork_score(instruction, input, output) AS score FROM sft "
             f"WHERE skywork_score(instruction, input, output) > {threshold} ORDER BY id")
    got = ctx.sql(query).to_arrow_table()
    assert got.column("id").to_pylist() == want
    by_id = dict(zip(expected.column("id").to_pylist(), expected.column("score").to_pylist()))
    assert all(s == by_id[i] for i, s in zip(got.column("id").to_pylist(), got.column("score").to_pylist()))

    sql = scorer.stats["sql"]
    assert sql["model_rows"] == cli_stats["model_rows"], "each distinct row scored once"
    ctx.sql(query).to_arrow_table()
    assert scorer.stats["sql"]["model_rows"] == cli_stats["model_rows"], "a second query hits the cache"


def test_chat_function_is_registered_too(llama):
    ctx = datafusion.SessionContext()
    skyscore.datafusion.register(ctx, llama)
    got = ctx.sql("""SELECT skywork_score_chat('[{"role":"user","content":"hi"},"""
                  """{"role":"assistant","content":"hello"}]') AS s""").to_arrow_table()
    assert got.column("s")[0].as_py() == llama.score(["hi"], ["hello"])[0].as_py()


def test_a_datafusion_of_another_major_is_refused(monkeypatch, llama):
    monkeypatch.setattr(datafusion, "__version__", "56.1.0")
    with pytest.raises(RuntimeError, match=r"datafusion-python 55\.x.*datafusion 56\.1\.0"):
        skyscore.datafusion.register(datafusion.SessionContext(), llama)
    # The FFI export itself refuses too, for objects obtained before the version changed.
    monkeypatch.setattr(datafusion, "__version__", "55.0.0")
    functions = skyscore.datafusion.udfs(llama)
    monkeypatch.setattr(datafusion, "__version__", "54.0.0")
    with pytest.raises(RuntimeError, match=r"datafusion 54\.0\.0"):
        datafusion.udf(functions[0])
