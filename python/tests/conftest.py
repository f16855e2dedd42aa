"""Shared fixtures. The tests never leave the machine or touch the user's files: the store,
the HF cache and XDG cache live in a temporary folder, and the hub is offline. They compare
the package with the command line, so they need the `skyscore` binary: SKYSCORE_BIN, else
$CARGO_TARGET_DIR/debug/skyscore (what `cargo test` builds), else target/debug/skyscore."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

_SCRATCH = tempfile.mkdtemp(prefix="skyscore-pytest-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_HOME=os.path.join(_SCRATCH, "hf"),
    XDG_CACHE_HOME=os.path.join(_SCRATCH, "xdg"),
    SKYSCORE_STORE=os.path.join(_SCRATCH, "default-store.redb"),
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sft_sample.parquet"
MODELS = {name: REPO / "sample_data" / "models" / name for name in ("tiny-llama", "tiny-qwen3")}


def skyscore_bin() -> Path:
    candidates = [os.environ.get("SKYSCORE_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", "skyscore"))
    candidates.append(str(REPO / "target" / "debug" / "skyscore"))
    for c in candidates:
        if c and os.path.isfile(c):
            return Path(c)
    pytest.fail(f"no skyscore binary (tried {candidates}): run `cargo build` first or set SKYSCORE_BIN")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(skyscore_bin()), *args], capture_output=True, text=True, check=False)


_CLI_CACHE: dict[str, tuple[pa.Table, dict]] = {}


def cli_scores(model: str) -> tuple[pa.Table, dict]:
    """`skyscore score --keep-columns` on the sample with `model`: its output table and stats."""
    if model not in _CLI_CACHE:
        out, stats = Path(_SCRATCH) / f"cli-{model}.parquet", Path(_SCRATCH) / f"cli-{model}.json"
        done = run_cli("score", "--model", str(MODELS[model]), "--input", str(SAMPLE), "--output", str(out),
                       "--keep-columns", "--no-store", "--no-progress", "--stats-json", str(stats))
        assert done.returncode == 0, done.stderr
        _CLI_CACHE[model] = (pq.read_table(out), json.loads(stats.read_text()))
    return _CLI_CACHE[model]


@pytest.fixture(scope="session")
def sample() -> pa.Table:
    return pq.read_table(SAMPLE)


@pytest.fixture(scope="session")
def llama():
    import skyscore

    return skyscore.Scorer(MODELS["tiny-llama"], store=False)
