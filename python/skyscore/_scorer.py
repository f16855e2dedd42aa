"""The Scorer: one loaded reward model, scoring Arrow data, Python lists and chat messages."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from . import _skyscore


def _as_reader(data: Any) -> pa.RecordBatchReader:
    """Any tabular input as a stream of record batches, read lazily."""
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        return data.to_reader()
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatchReader.from_batches(data.schema, [data])
    if hasattr(data, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(data)
    try:
        import pandas
    except ImportError:
        pandas = None
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False).to_reader()
    raise TypeError(
        f"cannot score a {type(data).__name__}: expected a pyarrow Table, RecordBatch or "
        "RecordBatchReader, a pandas DataFrame, or any object with __arrow_c_stream__ "
        "(polars and datafusion DataFrames)"
    )


def _string_array(values: Any, name: str) -> pa.Array:
    """One argument of :meth:`Scorer.score` as an Arrow string array."""
    try:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if isinstance(values, pa.Array):
            array = values
        elif hasattr(values, "__arrow_c_array__") or hasattr(values, "__arrow_c_stream__"):
            array = pa.array(values)
        else:
            array = pa.array(list(values), type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
        raise ValueError(f"`{name}` must hold strings (or None): {e}") from None
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
            or pa.types.is_string_view(array.type) or pa.types.is_null(array.type)):
        raise ValueError(f"`{name}` must hold strings, got Arrow type {array.type}")
    return array


class Scorer:
    """A Skywork-Reward-V2 reward model, loaded once, scoring rows as ``skyscore score`` does.

    Each row is the conversation ``[user: instruction (+ "\\n" + input when non-empty),
    assistant: output]`` rendered with the checkpoint's own chat template; its score is the raw
    logit of the reward head. A row's score does not depend on the rows scored with it.

    Args:
        model: A checkpoint folder, or a Hugging Face hub id ``owner/name[@revision]``
            (resolved through the HF cache; ``HF_HOME``, ``HF_TOKEN`` and
            ``HF_HUB_OFFLINE`` apply, as on the command line).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a list such as ``"cuda:0,cuda:1"``
            (one model replica per device; CUDA needs a CUDA build of the package).
        dtype: ``"auto"``, ``"f32"``, ``"f16"`` or ``"bf16"``. ``None`` is the command line's
            default: f32 on CPU, bf16 on GPUs. ``"auto"`` takes the fastest dtype whose scores
            stay within bf16 noise on this machine; :attr:`stats` says which it took and why.
        max_length: Longest prompt in tokens (default 4096); longer rows are truncated,
            counted, and flagged in the ``truncated`` column.
        batch_size: Most rows per forward pass on CPU (default 16).
        max_batch_tokens: Most padded tokens per forward pass (default 2048 on CPU, 65536 on
            GPUs); lower it if a GPU runs out of memory.
        truncation_side: ``"right"`` keeps a long row's first tokens (as transformers does),
            ``"left"`` its last.
        store: The persistent score store. ``None`` uses the default one (``$SKYSCORE_STORE``,
            else ``~/.cache/skyscore/scores.redb``, shared with the command line); a path picks
            a file; ``False`` uses none. Rows found there are not run through the model again,
            so an interrupted job resumes where it stopped.
        chunk_rows: Rows tokenized, length-sorted and scored together (default 1024 on CPU).
        max_memory: Memory one CPU forward pass may use, in GB (default 80% of the machine's).

    Raises:
        ValueError: An option is invalid.
        RuntimeError: The model cannot be loaded (missing files, unsupported architecture,
            a damaged checkpoint, a device that cannot be opened).

    The model loads without holding the GIL; scoring calls release it too, and Ctrl-C stops
    them after the device batch in flight (whose scores are kept in the store) with
    ``KeyboardInterrupt``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: str | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        truncation_side: str | None = None,
        store: str | os.PathLike[str] | bool | None = None,
        chunk_rows: int | None = None,
        max_memory: float | None = None,
    ) -> None:
        if store is False:
            store_path, use_store = None, False
        elif store is None or store is True:
            store_path, use_store = None, True
        else:
            store_path, use_store = os.fspath(store), True
        self.model = os.fspath(model)
        self._engine = _skyscore.Engine(
            self.model,
            device=device,
            dtype=dtype,
            max_length=max_length,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            chunk_rows=chunk_rows,
            truncation_side=truncation_side,
            store=store_path,
            use_store=use_store,
            max_memory_gb=max_memory,
        )

    def __repr__(self) -> str:
        s = self.stats
        return f"Scorer(model={self.model!r}, device={s['device']!r}, dtype={s['dtype']!r})"

    def score(
        self,
        instructions: Sequence[str | None] | pa.Array,
        outputs: Sequence[str | None] | pa.Array,
        inputs: Sequence[str | None] | pa.Array | None = None,
        *,
        skip_invalid: bool = False,
    ) -> pa.FloatArray:
        """Scores (instruction, input, output) rows; returns one float32 score per row, in order.

        Args:
            instructions: The user turns (Python strings, or an Arrow string array).
            outputs: The assistant answers, as many as ``instructions``.
            inputs: Optional extra user text, appended to the instruction after a newline
                when non-empty; ``None`` (or a None entry) means no input.
            skip_invalid: Give a null score to rows that cannot be scored (a None
                instruction or output, a prompt that does not render) instead of raising.

        Raises:
            ValueError: Lengths differ, a value is not a string, or a row cannot be scored
                (the message names the row).
        """
        columns = {"instruction": _string_array(instructions, "instructions"),
                   "output": _string_array(outputs, "outputs")}
        if inputs is not None:
            columns["input"] = _string_array(inputs, "inputs")
        lengths = {name: len(a) for name, a in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"instructions, outputs and inputs differ in length: {lengths}")
        table = pa.table(columns)
        scored = self.score_table(table, skip_invalid=skip_invalid)
        return scored.column("score").combine_chunks()

    def score_table(
        self,
        data: Any,
        *,
        instruction_column: str = "instruction",
        input_column: str = "input",
        output_column: str = "output",
        id_column: str | None = None,
        skip_invalid: bool = False,
    ) -> pa.Table:
        """Scores a table; returns its columns plus ``score``, ``num_tokens`` and ``truncated``.

        Args:
            data: A pyarrow Table, RecordBatch or RecordBatchReader, a polars or datafusion
                DataFrame (anything with ``__arrow_c_stream__``), or a pandas DataFrame.
            instruction_column: The instruction column (string; required).
            input_column: The input column (string; optional: a missing column is no input).
            output_column: The output column (string; required).
            id_column: A column that names rows in error messages (default ``id`` if present).
            skip_invalid: Give a null score to rows that cannot be scored instead of raising.

        Rows keep their order. Columns may be Utf8, LargeUtf8 or Utf8View; a NULL input is an
        empty one, a NULL instruction or output is an invalid row.

        Raises:
            ValueError: A column is missing or not a string column, the table already has a
                ``score``/``num_tokens``/``truncated`` column, or a row cannot be scored.
        """
        names = (instruction_column, input_column, output_column, id_column)
        schema, batches = self._stream(data, names, skip_invalid)
        return pa.Table.from_batches(list(batches), schema=schema)

    def score_batches(
        self,
        data: Any,
        *,
        instruction_column: str = "instruction",
        input_column: str = "input",
        output_column: str = "output",
        id_column: str | None = None,
        skip_invalid: bool = False,
    ) -> pa.RecordBatchReader:
        """Like :meth:`score_table`, as a stream: each input batch is scored when the returned
        reader is asked for it, so memory stays bounded by a batch whatever the input's size.
        The columns are checked now, before anything is scored."""
        names = (instruction_column, input_column, output_column, id_column)
        schema, batches = self._stream(data, names, skip_invalid)
        return pa.RecordBatchReader.from_batches(schema, batches)

    def score_chat(
        self,
        messages: Iterable[str | Sequence[dict[str, str]] | None],
        *,
        skip_invalid: bool = False,
    ) -> pa.FloatArray:
        """Scores whole conversations: each item is a JSON string or a list of
        ``{"role": ..., "content": ...}`` dicts, rendered with the model's chat template as is
        (no system prompt is added). ``None`` gives a null score.

        Raises:
            ValueError: An item is not a message list (the message names its index), or a
                conversation cannot be scored.
        """
        items: list[str | None] = []
        for i, m in enumerate(messages):
            if m is None or isinstance(m, str):
                items.append(m)
            else:
                try:
                    items.append(json.dumps(list(m)))
                except TypeError as e:
                    raise ValueError(f"messages[{i}] is not a list of {{role, content}} dicts: {e}") from None
        return pa.array(self._engine.score_chat(items, skip_invalid=skip_invalid))

    @property
    def stats(self) -> dict[str, Any]:
        """The figures of ``skyscore score --stats-json`` over every call so far: rows,
        model_rows, store_hits, duplicate_rows, tokens, padded_tokens, truncated_rows,
        batches, wall_s (time inside scoring calls), tokens_per_s, load_s, model, device,
        dtype (and dtype_reason for ``"auto"``), the score distribution (score_count,
        score_mean, score_min, score_max, score_quantiles, score_histogram), token_lengths,
        and under ``sql`` the SQL functions' own figures once they were registered."""
        return json.loads(self._engine.stats_json())

    @property
    def metadata(self) -> dict[str, str]:
        """What the scores depend on besides the rows (model, revision, template hash,
        max_length, dtype...): the key-value metadata ``skyscore score`` writes to Parquet."""
        return dict(self._engine.metadata())

    # -- internals --------------------------------------------------------------------------

    def _score_batch(self, batch: pa.RecordBatch, names: tuple, first_row: int, skip_invalid: bool) -> pa.RecordBatch:
        instruction, input_, output, id_column = names
        out = self._engine.score_batch(
            batch,
            instruction_column=instruction,
            input_column=input_,
            output_column=output,
            id_column=id_column,
            first_row=first_row,
            skip_invalid=skip_invalid,
            source="the table",
        )
        return pa.record_batch(out)

    def _stream(self, data: Any, names: tuple, skip_invalid: bool) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The output schema (the columns checked now, by scoring an empty batch) and the scored
        batches, each scored when it is asked for."""
        reader = _as_reader(data)
        schema = reader.schema
        empty = pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)
        out_schema = self._score_batch(empty, names, 0, False).schema

        def batches() -> Iterator[pa.RecordBatch]:
            first_row = 0
            for batch in reader:
                yield self._score_batch(batch, names, first_row, skip_invalid)
                first_row += batch.num_rows

        return out_schema, batches()
