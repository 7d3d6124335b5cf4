"""Progress bars per stage (rich), or plain log lines when disabled / not a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stdout.isatty()
        self._rich = None
        self._plain: dict[int, list] = {}

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
            self._rich.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def add(self, name: str, total: int) -> int:
        if self._rich is not None:
            return self._rich.add_task(name, total=total, info="")
        tid = len(self._plain)
        self._plain[tid] = [name, total, 0, time.time()]
        return tid

    def advance(self, task: int, info: str = "") -> None:
        if self._rich is not None:
            self._rich.update(task, advance=1, info=info)
            return
        row = self._plain[task]
        row[2] += 1
        n, total = row[2], row[1]
        if n == total or n == 1 or n % max(1, total // 5) == 0:
            print(f"[{row[0]}] {n}/{total} {info} ({time.time() - row[3]:.0f}s)", flush=True)

    def note(self, text: str) -> None:
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            print(text, flush=True)
