"""Type stubs of the native module (the public API is in skyscore/__init__.py)."""

from collections.abc import Sequence
from typing import Any

__version__: str
DATAFUSION_FFI_MAJOR: int

class ArrowData:
    """Arrow data for pyarrow (``pa.array(..)`` / ``pa.record_batch(..)``)."""
    def __arrow_c_array__(self, requested_schema: Any | None = None) -> tuple[Any, Any]: ...
    def __len__(self) -> int: ...

class ScalarUdf:
    """A SQL function for ``datafusion.udf(obj)``."""
    @property
    def name(self) -> str: ...
    def __datafusion_scalar_udf__(self) -> Any: ...

class Engine:
    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        chunk_rows: int | None = None,
        truncation_side: str | None = None,
        store: str | None = None,
        use_store: bool = True,
        max_memory_gb: float | None = None,
    ) -> None: ...
    def score_batch(
        self,
        batch: Any,
        *,
        instruction_column: str,
        input_column: str,
        output_column: str,
        id_column: str | None = None,
        first_row: int = 0,
        skip_invalid: bool = False,
        source: str = "the table",
    ) -> ArrowData: ...
    def score_chat(self, messages: Sequence[str | None], *, skip_invalid: bool = False) -> ArrowData: ...
    def stats_json(self) -> str: ...
    def metadata(self) -> list[tuple[str, str]]: ...
    def udfs(self) -> list[ScalarUdf]: ...
