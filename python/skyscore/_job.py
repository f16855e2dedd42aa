"""``skyscore.score``: the command line's ``skyscore score`` job from Python."""

from __future__ import annotations

import json
import os
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


class _Writer:
    """Writes to a temporary sibling named after this host and process, renamed over the target
    at the end: a reader never sees a half-written file and a failed run leaves the old one."""

    def __init__(self, path: str, schema: pa.Schema, metadata: dict[str, str]) -> None:
        self.path, self.fmt = path, _format(path)
        folder, name = os.path.split(os.path.abspath(path))
        self.temp = os.path.join(folder, f".{name}.skyscore-{socket.gethostname()}-{os.getpid()}.tmp")
        self.first = True
        if self.fmt == "parquet":
            self.parquet = pq.ParquetWriter(self.temp, schema.with_metadata(metadata))
        else:
            self.file = open(self.temp, "w", encoding="utf-8")
            if self.fmt == "json":
                self.file.write("[")

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
        os.replace(self.temp, self.path)

    def abandon(self) -> None:
        try:
            (self.parquet if self.fmt == "parquet" else self.file).close()
        finally:
            if os.path.exists(self.temp):
                os.remove(self.temp)


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
