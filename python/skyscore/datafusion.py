"""skyscore's SQL functions in datafusion-python.

``skywork_score(instruction, input, output)`` and ``skywork_score_chat(messages)`` cross into
datafusion-python through its FFI (``datafusion_ffi``, major 55). They share the scorer's model,
its score store and one score cache, so each distinct row is scored once per process however
many queries, partitions or contexts call them::

    import datafusion, skyscore, skyscore.datafusion
    ctx = datafusion.SessionContext()
    skyscore.datafusion.register(ctx, skyscore.Scorer("sample_data/models/tiny-llama"))
    ctx.register_parquet("sft", "sample_data/sft_sample.parquet")
    ctx.sql("SELECT id, skywork_score(instruction, input, output) AS score FROM sft "
            "WHERE skywork_score(instruction, input, output) > 0").to_arrow_table()

What does not cross: skyscore's optimizer rules (``skyscore sql`` keeps cheap filters below
the model so rows they drop are never scored). The FFI carries functions, not rules, so
in datafusion-python put cheap conditions in a subquery or CTE below the scoring call when
they should spare the model work.

Only a datafusion-python whose major version is 55 can take these functions (a UDF crossing
between majors crashes at query time); any other is refused with an error naming both versions.
An expression holding them is pickled by name only: a worker process must register them itself.
"""

from __future__ import annotations

from typing import Any

from . import _skyscore
from ._scorer import Scorer

REQUIRED_MAJOR: int = _skyscore.DATAFUSION_FFI_MAJOR


def check_version() -> str:
    """Returns datafusion-python's version; raises ``RuntimeError`` when its major is not 55."""
    import datafusion

    version = getattr(datafusion, "__version__", "unknown")
    if version.split(".")[0] != str(REQUIRED_MAJOR):
        raise RuntimeError(
            f"skyscore's SQL functions are built for datafusion-python {REQUIRED_MAJOR}.x "
            f"(datafusion-ffi {REQUIRED_MAJOR}), but this environment has datafusion {version}; "
            f"a UDF crossing between majors would crash. Install a matching one: "
            f"pip install 'skyscore[datafusion]' (datafusion>={REQUIRED_MAJOR},<{REQUIRED_MAJOR + 1})"
        )
    return version


def udfs(scorer: Scorer) -> list[Any]:
    """``skywork_score`` and ``skywork_score_chat`` over ``scorer``: objects with
    ``__datafusion_scalar_udf__``, for ``datafusion.udf(obj)``."""
    check_version()
    return list(scorer._engine.udfs())


def register(ctx: Any, scorer: Scorer) -> None:
    """Registers ``skywork_score`` and ``skywork_score_chat`` on a datafusion-python
    ``SessionContext``. Their figures appear in ``scorer.stats["sql"]``."""
    import datafusion

    for function in udfs(scorer):
        ctx.register_udf(datafusion.udf(function))
