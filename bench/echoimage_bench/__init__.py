"""The benchmark: a copy-detection suite built from any folder of photos (see
`echoimage_bench.runner`), split by concern: transforms, metrics, baselines, padding,
memory, the run's context, the runner and the report, and the peers run beside
EchoImage (`peers`, `peer_transforms`, `peer_suite`)."""

from echoimage_bench.report import render_markdown
from echoimage_bench.runner import run_benchmark

__all__ = ["render_markdown", "run_benchmark"]
