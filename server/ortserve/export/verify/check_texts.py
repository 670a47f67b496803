"""The texts the parity check runs on: the bundled check set, or the user's own file.

A variant passes or fails on these texts alone, so they must cover what a model meets when
served: two-word queries to paragraphs past the model's max length (truncated, as the daemon
truncates), several languages and scripts (Latin, Cyrillic, Greek, CJK, Hangul, Arabic,
Devanagari), code, numbers, URLs and emoji. The bundled ``check_texts.txt`` ships in the wheel
(package data); it was written for this project, nothing is downloaded. ``--check-texts FILE``
replaces it with the same format: UTF-8, one text per line, blank lines skipped.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ortserve.export.errors import EXIT_USAGE, ExportError

#: Fewer texts than this cannot show a quantized variant's worst case.
MIN_CHECK_TEXTS = 8

#: The bundled check set, beside this module.
BUNDLED_CHECK_TEXTS = "check_texts.txt"


class CheckTextsError(ExportError):
    """A ``--check-texts`` file that cannot serve as a check set: a usage error (exit 2)."""

    exit_code = EXIT_USAGE


def check_texts(path: Path | None = None) -> list[str]:
    """The check set: the bundled texts (``path`` None), or those of the file at ``path``."""
    if path is None:
        bundled = resources.files(__package__ or "ortserve.export.verify") / BUNDLED_CHECK_TEXTS
        return parse_check_texts(bundled.read_bytes(), BUNDLED_CHECK_TEXTS)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckTextsError(f"--check-texts {path}: no such file") from None
    except OSError as exc:
        raise CheckTextsError(f"--check-texts {path}: cannot read it ({exc.strerror})") from None
    return parse_check_texts(data, f"--check-texts {path}")


def parse_check_texts(data: bytes, where: str) -> list[str]:
    """One text per line of UTF-8 ``data`` (a BOM and blank lines skipped); ``where`` names the
    file in the error raised when a line is not UTF-8 or there are too few texts."""
    texts: list[str] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise CheckTextsError(
                f"{where}: line {number} is not UTF-8 (byte {exc.start + 1}); the file needs "
                "one UTF-8 text per line"
            ) from None
        if line.strip():
            texts.append(line.strip())
    if len(texts) < MIN_CHECK_TEXTS:
        raise CheckTextsError(
            f"{where}: {len(texts)} text(s), at least {MIN_CHECK_TEXTS} needed (one per line, "
            "blank lines skipped)"
        )
    return texts
