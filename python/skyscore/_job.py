"""``skyscore.score``: the command line's ``skyscore score`` job from Python."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import secrets
import shutil
import socket
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from ._scorer import Scorer

DEFAULT_MODEL = "Skywork/Skywork-Reward-V2-Llama-3.1-8B-40M"
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"{path}: unknown format {ext!r} (use .jsonl, .json or .parquet)")
    return _FORMATS[ext]


def _open_input(path: str, batch_rows: int) -> pa.RecordBatchReader:
    fmt = _format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "parquet":
        file = pq.ParquetFile(path)
        return pa.RecordBatchReader.from_batches(file.schema_arrow, file.iter_batches(batch_size=batch_rows))
    if fmt == "jsonl":
        try:
            table = pa_json.read_json(path)
        except pa.ArrowInvalid as e:
            raise ValueError(f"{path}: not valid JSON lines: {e}") from None
    else:
        with open(path, encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON array of rows")
        table = pa.Table.from_pylist(rows)
    return table.to_reader(max_chunksize=batch_rows)


_TEMP_COUNTER = itertools.count()


def _remove_stale_temps(folder: str, prefix: str) -> None:
    """Removes the temporaries of a target whose writer is gone: nobody holds the lock on their
    ``.lock`` file (the command line's scheme, see src/io/paths/temp.rs)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".lock")):
            continue
        uid = name[len(prefix) : -len(".lock")]
        lock_path = os.path.join(folder, name)
        try:
            fd = os.open(lock_path, os.O_WRONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer lives
            for temp in names:
                if temp.startswith(f"{prefix}{uid}.tmp"):
                    path = os.path.join(folder, temp)
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.remove(path)
            with contextlib.suppress(OSError):
                os.remove(lock_path)
        finally:
            os.close(fd)


class _Writer:
    """Writes to a temporary sibling ``.NAME.skyscore-ID.tmp.EXT``, renamed over the target at the
    end: a reader never sees a half-written file and a failed run leaves the old one. The writer
    holds a lock on ``.NAME.skyscore-ID.lock`` while it lives, so a later run (of the command line
    or of Python, on any machine sharing the folder) removes the temporary only once its writer is
    gone."""

    def __init__(self, path: str, schema: pa.Schema, metadata: dict[str, str]) -> None:
        self.path, self.fmt = path, _format(path)
        folder, name = os.path.split(os.path.abspath(path))
        stem, ext = os.path.splitext(name)
        prefix = f".{stem}.skyscore-"
        _remove_stale_temps(folder, prefix)
        host = "".join(c if c.isascii() and c.isalnum() else "_" for c in socket.gethostname()) or "host"
        uid = f"{host}-{os.getpid()}-{next(_TEMP_COUNTER)}-{secrets.token_hex(4)}"
        # Locked under a name no scan looks at, then renamed: nobody sees the lock file unheld.
        claim = os.path.join(folder, f"{prefix}{uid}.claim")
        self.lock_path = os.path.join(folder, f"{prefix}{uid}.lock")
        self.lock_fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        os.rename(claim, self.lock_path)
        self.temp = os.path.join(folder, f"{prefix}{uid}.tmp{ext}")
        self.first = True
        try:
            if self.fmt == "parquet":
                self.parquet = pq.ParquetWriter(self.temp, schema.with_metadata(metadata))
            else:
                self.file = open(self.temp, "w", encoding="utf-8")
                if self.fmt == "json":
                    self.file.write("[")
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        """Removes the temporary (if still there), then the lock file, then lets the lock go."""
        with contextlib.suppress(OSError):
            os.remove(self.temp)
        with contextlib.suppress(OSError):
            os.remove(self.lock_path)
        os.close(self.lock_fd)

    def write(self, batch: pa.RecordBatch) -> None:
        if self.fmt == "parquet":
            self.parquet.write_batch(batch)
            return
        for row in batch.to_pylist():
            line = json.dumps(row, ensure_ascii=False, default=str)
            if self.fmt == "json":
                self.file.write(("\n" if self.first else ",\n") + line)
            else:
                self.file.write(line + "\n")
            self.first = False

    def finish(self) -> None:
        if self.fmt == "parquet":
            self.parquet.close()
        else:
            if self.fmt == "json":
                self.file.write("\n]\n")
            self.file.close()
        try:
            os.replace(self.temp, self.path)
        finally:
            self._release()

    def abandon(self) -> None:
        try:
            (self.parquet if self.fmt == "parquet" else self.file).close()
        finally:
            self._release()


def score(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    id_column: str | None = None,
    instruction_column: str = "instruction",
    input_column: str = "input",
    output_column: str = "output",
    keep_columns: bool = False,
    skip_invalid: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Scores a file into a file, like ``skyscore score --input INPUT --output OUTPUT``.

    Args:
        input: A ``.parquet``, ``.jsonl`` or ``.json`` (array) file of Alpaca rows.
        output: ``.jsonl``, ``.json`` or ``.parquet``: ``{"id", "score"}`` rows in input order
            (``id`` from the id column, else the row index), or with ``keep_columns`` every
            input column plus ``score``, ``num_tokens`` and ``truncated``. Parquet outputs
            carry the model's metadata. Written atomically: a failed run leaves no partial file.
        model: Checkpoint folder or hub id (default the config's Skywork-Reward-V2-Llama-3.1-8B-40M).
        id_column, instruction_column, input_column, output_column: Column names.
        keep_columns: Carry the input's columns into the output.
        skip_invalid: Give a null score to rows that cannot be scored instead of failing.
        **options: Any :class:`Scorer` option (device, dtype, max_length, batch_size,
            max_batch_tokens, truncation_side, store, chunk_rows, max_memory).

    Returns:
        The run's figures (:attr:`Scorer.stats`). With the store (the default), a rerun after
        an interruption runs the model only on rows it has not scored yet.
    """
    input, output = os.fspath(input), os.fspath(output)
    if os.path.abspath(input) == os.path.abspath(output):
        raise ValueError(f"{output}: the output would overwrite the input")
    scorer = Scorer(model, **options)
    reader = _open_input(input, options.get("chunk_rows") or 1024)
    names = dict(instruction_column=instruction_column, input_column=input_column, output_column=output_column)
    schema = reader.schema
    if id_column is not None and id_column not in schema.names:
        raise ValueError(f"{input}: no id column `{id_column}`")
    id_name = id_column or ("id" if "id" in schema.names else None)
    batches = scorer.score_batches(reader, id_column=id_name, skip_invalid=skip_invalid, **names)
    if keep_columns:
        out_schema = batches.schema
    else:
        id_type = schema.field(id_name).type if id_name else pa.uint64()
        out_schema = pa.schema([pa.field("id", id_type), pa.field("score", pa.float32())])
    writer = _Writer(output, out_schema, scorer.metadata)
    first_row = 0
    try:
        for batch in batches:
            if not keep_columns:
                ids = batch.column(id_name) if id_name else pa.array(range(first_row, first_row + batch.num_rows),
                                                                      type=pa.uint64())
                batch = pa.record_batch([ids, batch.column("score")], schema=out_schema)
            writer.write(batch)
            first_row += batch.num_rows
        writer.finish()
    except BaseException:
        writer.abandon()
        raise
    return scorer.stats
