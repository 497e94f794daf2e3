"""The benchmark: a copy-detection suite built from any folder of photos (see
`echoimage.bench.runner`), split by concern: transforms, metrics, baselines, padding,
memory, the run's context, the runner and the report."""

from echoimage.bench.report import render_markdown
from echoimage.bench.runner import run_benchmark

__all__ = ["render_markdown", "run_benchmark"]
