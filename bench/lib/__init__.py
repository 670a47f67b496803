"""What the benchmark scripts share: the synthetic encoder's inputs (``encoder``), CPU and memory
figures from /proc (``procstat``), a server process on loopback (``daemon``), perf_analyzer
(``perf_analyzer``), the daemon's data plane in process (``inprocess``); and, for ``bench.ratio``,
its repositories (``variants``), raw ONNX Runtime (``raw``), the daemon's layers (``layers``),
the served runs (``served``), py-spy (``profile``) and the report (``tables``); for
``bench.generation``, its random distilgpt2-sized model (``gpt2bench``) and the streams it times
(``streams``).
"""

from pathlib import Path

#: The repository root (processes start there) and the benchmarks' folder.
ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
