"""The state one ``ortserve export`` hands from step to step: what was asked, what was found, and
what each step made, so that no step takes a long parameter list or picks a graph by its place
in a list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ortserve.export.convert.quantize import Quantization
from ortserve.export.options import TASKS, ExportOptions, Task
from ortserve.export.report import Reporter
from ortserve.export.source import ModelSource
from ortserve.export.verify.bench import BenchRow
from ortserve.export.verify.check import Variant, Verdict
from ortserve.export.verify.decide import Decision


@dataclass(frozen=True, slots=True)
class Variants:
    """The graphs one export made, by what each is. Each is made from the one before it."""

    exported: Variant  # Optimum's plain FP32 export
    optimized: Variant | None = None  # --optimize: ONNX Runtime's transformer optimizer
    quantized: Variant | None = None  # --quantize: made from ``fp32``

    @property
    def fp32(self) -> Variant:
        """The FP32 graph that is published (and quantized): the optimized one, if made."""
        return self.optimized or self.exported

    @property
    def last(self) -> Variant:
        """The last graph made (the quantized one, if made); config.pbtxt takes its inputs."""
        return self.quantized or self.fp32

    @property
    def export_dir(self) -> Path:
        """Optimum's output folder: the tokenizer and config files beside the plain export."""
        return self.exported.path.parent

    def __iter__(self) -> Iterator[Variant]:
        """In the order made: the export, the optimized graph, the quantized one."""
        made = (self.exported, self.optimized, self.quantized)
        return iter([v for v in made if v is not None])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def named(self, name: str) -> Variant:
        return next(v for v in self if v.name == name)


@dataclass(slots=True)
class ExportRun:
    """One run of ``ortserve export``. The first fields are fixed before any graph is made; the
    rest are filled in as the steps run (build, check, benchmark, decide)."""

    opts: ExportOptions
    reporter: Reporter
    source: ModelSource
    task: str  # a key of TASKS: --task, or detected from the model folder
    max_length: int  # tokens: --max-length, or the model's own limit
    quant: Quantization | None  # --quantize with "auto" resolved; None: not quantized
    work: Path  # the temporary folder every graph and the benchmark inputs are written into
    variants: Variants = field(init=False)  # set once the graphs are built
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # by variant name, in made order
    bench: list[BenchRow] | None = None  # None: not benchmarked (--no-bench)
    decisions: list[Decision] = field(default_factory=list)  # one per candidate

    @property
    def spec(self) -> Task:
        return TASKS[self.task]

    @property
    def candidates(self) -> list[str]:
        """The variants that may be published, in publish order: the FP32 graph (unless
        --quantized-only), then the quantized one."""
        names = [] if self.quant and self.opts.quantized_only else [self.variants.fp32.name]
        if self.variants.quantized is not None:
            names.append(self.variants.quantized.name)
        return names
