"""hpload.loadgen: the load generator.

Public surface: ``Target``, ``WorkloadSpec``, ``LoadSpec``, ``LoadStep``, ``SLO`` (what to send, how hard, to whom,
what counts as good), ``run_load`` (one run, optionally over several worker processes), ``RunResult`` (vLLM
bench-serve-style summary, mergeable, saved atomically) and ``format_table`` (the console summary).
Live progress reaches consumers only as ``hpload.loadgen.snapshot.Snapshot`` values.
"""

from hpload.loadgen.result import RunResult, format_table
from hpload.loadgen.run import run_load
from hpload.loadgen.specs import SLO, LoadSpec, LoadStep, Target, WorkloadSpec

__all__ = ["SLO", "LoadSpec", "LoadStep", "RunResult", "Target", "WorkloadSpec", "format_table", "run_load"]
