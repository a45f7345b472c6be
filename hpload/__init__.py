"""hpload: load testing and SLO-constrained tuning for LLM inference servers.

The package is one namespace: ``hpload.servers``, ``hpload.loadgen``, ``hpload.scenarios`` and ``hpload.tui`` live
in the repository's top-level folders of those names. Nothing here imports torch, transformers or vllm at import
time, so the CLI starts instantly.
"""

__version__ = "0.1.0"
