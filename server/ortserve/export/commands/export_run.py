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
from ortserve.export.verify.decide import Decision, SpeedLike


@dataclass(frozen=True, slots=True)
class Variants:
    """The graphs one export made, by what each is. Each is made from the one before it."""

    exported: Variant  # Optimum's plain FP32 export
    optimized: Variant | None = None  # --optimize: ONNX Runtime's transformer optimizer
    quantized: tuple[Variant, ...] = ()  # --quantize: the candidates, each made from ``fp32``

    @property
    def fp32(self) -> Variant:
        """The FP32 graph that is published (and quantized): the optimized one, if made."""
        return self.optimized or self.exported

    @property
    def last(self) -> Variant:
        """The last graph made (a quantized one, if made); config.pbtxt takes its inputs."""
        return self.quantized[-1] if self.quantized else self.fp32

    @property
    def export_dir(self) -> Path:
        """Optimum's output folder: the tokenizer and config files beside the plain export."""
        return self.exported.path.parent

    def __iter__(self) -> Iterator[Variant]:
        """In the order made: the export, the optimized graph, the quantized candidates."""
        made = (self.exported, self.optimized, *self.quantized)
        return iter([v for v in made if v is not None])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def named(self, name: str) -> Variant:
        return next(v for v in self if v.name == name)

    def with_quantized(self, variant: Variant) -> Variants:
        return Variants(self.exported, self.optimized, (*self.quantized, variant))


@dataclass(frozen=True, slots=True)
class Skipped:
    """A quantization candidate that was not built (or not quantizable), and why."""

    name: str  # the variant name it would have had
    description: str
    reason: str


@dataclass(slots=True)
class ExportRun:
    """One run of ``ortserve export``. The first fields are fixed before any graph is made; the
    rest are filled in as the steps run (build, check, speed, decide, benchmark)."""

    opts: ExportOptions
    reporter: Reporter
    source: ModelSource
    task: str  # a key of TASKS: --task, or detected from the model folder
    max_length: int  # tokens: --max-length, or the model's own limit
    quant: Quantization | None  # --quantize with "auto" resolved to the CPU family; None: not
    work: Path  # the temporary folder every graph and the benchmark inputs are written into
    variants: Variants = field(init=False)  # set once the graphs are built
    check_texts: tuple[str, ...] = ()  # what the parity check runs on
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # by variant name, in made order
    specs: dict[str, Quantization] = field(default_factory=dict)  # each candidate's, by name
    skipped: list[Skipped] = field(default_factory=list)  # candidates not built, and why
    speeds: dict[str, SpeedLike] = field(default_factory=dict)  # judged against FP32, by name
    bench: list[BenchRow] | None = None  # None: not benchmarked (--no-bench)
    decisions: list[Decision] = field(default_factory=list)  # one per candidate

    @property
    def spec(self) -> Task:
        return TASKS[self.task]

    @property
    def auto(self) -> bool:
        """``--quantize`` (auto): several candidates, the fastest that passes is published."""
        return self.opts.quantize == "auto"

    @property
    def published_names(self) -> list[str]:
        return [d.variant for d in self.decisions if d.publish]
