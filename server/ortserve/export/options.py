"""The tool's typed settings and its fixed tables (tasks, optimization levels, quantization).

Nothing here imports torch, transformers or optimum: ``--help`` and argument checks stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Task:
    """One task the exporter knows: how Optimum names it and how config.pbtxt names it."""

    name: str  # what --task takes
    optimum_task: str  # Optimum's task name
    library: str  # Optimum's library name: transformers or sentence_transformers
    config_task: str | None  # the `task` parameter for config.pbtxt; None: a tensor model
    has_labels: bool  # outputs are scores over classes/tokens: label agreement is checked
    checked_outputs: tuple[str, ...] = ()  # the outputs the checks judge; (): every output

    @property
    def generates(self) -> bool:
        """A causal language model, published as a generation model: the with-past export
        with its LM head sliced to the last position, served by the daemon's generation
        engine (text in, tokens streamed out)."""
        return self.config_task == GENERATION_TASK

    @property
    def served_as_tensors(self) -> bool:
        """The daemon has no pipeline for it: published without text settings or a top-level
        tokenizer.json, so it serves the graph's own inputs and outputs."""
        return self.config_task is None

    @property
    def served_as(self) -> str:
        """What the manifest records: ``generation``, ``text`` or ``tensors``."""
        if self.generates:
            return "generation"
        return "tensors" if self.served_as_tensors else "text"


_TEXT = "transformers"
_ST = "sentence_transformers"
_WITH_PAST = "text-generation-with-past"
#: The ``task`` parameter of a generation model's config.pbtxt (the daemon's generation engine).
GENERATION_TASK = "text-generation"
#: What the generation check compares: the next-token logits after the prompt, and after one
#: decode step fed the prompt's past (``verify/generation.py``).
GENERATION_OUTPUTS = ("logits", "decode_logits")
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("text-classification", "text-classification", _TEXT, "text-classification", True),
        Task("token-classification", "token-classification", _TEXT, "token-classification", True),
        Task("question-answering", "question-answering", _TEXT, "question-answering", True),
        Task("feature-extraction", "feature-extraction", _TEXT, "feature-extraction", False),
        # token_embeddings is an intermediate of sentence_embedding: judge what is served.
        Task(
            "sentence-embeddings",
            "feature-extraction",
            _ST,
            "sentence-embeddings",
            False,
            checked_outputs=("sentence_embedding",),
        ),
        # A causal LM: one with-past graph for prefill (an empty past) and decode alike, both
        # tasks. Judged on the next-token logits, after the prompt and after one decode step.
        Task(
            "text-generation",
            _WITH_PAST,
            _TEXT,
            GENERATION_TASK,
            True,
            checked_outputs=GENERATION_OUTPUTS,
        ),
        Task(
            _WITH_PAST,
            _WITH_PAST,
            _TEXT,
            GENERATION_TASK,
            True,
            checked_outputs=GENERATION_OUTPUTS,
        ),
    )
}

#: ``--optimize`` levels (Optimum's AutoOptimizationConfig): O1 basic, O2 + transformer fusions,
#: O3 + approximate GELU, O4 + FP16 (GPU only). O3 and O4 change numerics, so they are checked
#: like quantized variants (cosine, label agreement) rather than by max |diff|.
OPTIMIZE_LEVELS = ("O1", "O2", "O3", "O4")
EXACT_OPTIMIZE_LEVELS = ("O1", "O2")

#: ``--quantize`` targets: dynamic INT8 tuned for a CPU family (``auto`` reads this machine's CPU
#: flags), or ``weight-only``: 8-bit weights in blocks of 32 (MatMulNBits), no per-tensor scale.
QUANTIZE_TARGETS = ("auto", "avx2", "avx512", "avx512_vnni", "arm64", "weight-only")

#: What ``max_sequence_length`` is capped at when it comes from the tokenizer.
MAX_SEQUENCE_LENGTH_CAP = 512

#: ``max_batch_size`` in a new config.pbtxt when ``--max-batch-size`` is not given.


#: Where a tensor model's tokenizer files go in its version folder: a ``tokenizer.json`` beside
#: ``model.onnx`` would make the daemon load it as a text model.
TOKENIZER_FOLDER = "tokenizer"


def tensor_model_note(task: str) -> str:
    """What the exporter says when it publishes ``task`` as a tensor model."""
    return (
        f"the daemon has no {task} pipeline: the model is published as a "
        "tensor model, without a `task` parameter, and serves its graph's own inputs "
        "(input_ids, attention_mask...) and outputs (logits...); clients tokenize and decode "
        f"themselves, with the tokenizer files published in {TOKENIZER_FOLDER}/"
    )


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a variant passes its check."""

    fp32_tolerance: float = 1e-4  # FP32 variants: fail when max |ONNX - PyTorch| is above this
    min_cosine: float = 0.98  # quantized/approximate variants: fail below this cosine
    min_agreement: float = 0.9  # ... or below this fraction of equal argmax labels


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """``ortserve export``: every flag, with its default."""

    model: str  # a local folder (or a Hugging Face Hub id found in the local cache)
    name: str  # the model's folder name in the repository
    repo: Path = Path("model_repo")
    task: str | None = None  # a key of TASKS; None: detected from the model folder
    opset: int | None = None  # None: Optimum's default for the architecture
    optimize: str | None = None  # one of OPTIMIZE_LEVELS
    quantize: str | None = None  # one of QUANTIZE_TARGETS
    per_channel: bool = True  # dynamic INT8: one scale per weight column, not per tensor
    quantized_only: bool = False  # publish only the quantized variant, not the FP32 one too
    max_length: int | None = None  # tokens; None: from the model's files, capped at 512
    # written into a new config.pbtxt; None: DEFAULT_MAX_BATCH_SIZE (a generation model: no
    # batch axis, and this is its max_num_seqs, None leaving the engine's default)
    max_batch_size: int | None = None
    sample_texts: tuple[str, ...] = ()  # () : the built-in sentences
    # the parity check's texts: a UTF-8 file, one per line; None: the bundled check set
    check_texts: Path | None = None
    thresholds: Thresholds = Thresholds()
    bench: bool = True
    bench_iterations: int = 50  # timed runs per variant and batch size (after a warm-up)
    bench_threads: int | None = None  # threads for torch and ORT alike; None: every CPU
    # seconds the interleaved FP32-vs-quantized timing may run (verify/speed.py) before it judges
    speed_budget_s: float = 60.0
    require_faster: bool = False  # leave out a quantized variant not shown faster than FP32
    force: bool = False  # publish even when a check fails or the quantized variant is slower
    publish: bool = True  # False: export, check and benchmark only
    command: str = ""  # the exact command line, for the manifest


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """``ortserve publish``: an existing ONNX file or folder into the repository."""

    path: Path
    name: str
    repo: Path = Path("model_repo")
    task: str | None = None  # None: from a manifest.json beside the model, or the output names
    max_length: int | None = None  # None: the model's own (a text model only)
    max_batch_size: int | None = None  # None: DEFAULT_MAX_BATCH_SIZE, and no config.pbtxt for
    # a tensor model with no known task (the daemon completes its config from the graph)
    command: str = ""
