"""What a person sees: progress of long steps (on stderr), tables and JSON (on stdout), via rich."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table


class Reporter:
    def __init__(self) -> None:
        # Piped output (CI logs, tests) would wrap at 80 columns: give it room.
        err = Console(stderr=True, highlight=False)
        self.err = err if err.is_terminal else Console(stderr=True, highlight=False, width=160)
        out = Console(highlight=False)
        self.out = out if out.is_terminal else Console(highlight=False, width=160)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """A spinner while ``label`` runs, then one line with how long it took."""
        start = time.monotonic()
        with self.err.status(label):
            yield
        self.err.print(f"[green]done[/] {label} [dim]({time.monotonic() - start:.1f} s)[/]")

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[str], None]]:
        """A bar over ``total`` parts; call the yielded function as each part finishes."""
        start = time.monotonic()
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(label, total=total)

            def advance(part: str) -> None:
                bar.update(task, advance=1, description=f"{label}: {part} done")

            yield advance
        self.err.print(f"[green]done[/] {label} [dim]({time.monotonic() - start:.1f} s)[/]")

    def line(self, text: str) -> None:
        self.out.print(text, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)

    def error(self, command: str, text: str) -> None:
        """One unwrapped line (the terminal wraps it), so logs keep it whole."""
        self.err.print(f"[red]ortserve {command}: error:[/] {escape(text)}", soft_wrap=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        self.out.print(table)

    def print_json(self, value: Any) -> None:
        """Highlighted JSON for a person."""
        self.out.print_json(json.dumps(value, default=str))

    def raw_json(self, value: Any) -> None:
        """Plain JSON for a program: never wrapped, never coloured."""
        print(json.dumps(value, indent=2, default=str), flush=True)
