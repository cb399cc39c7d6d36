"""What the harness shows while a benchmark runs: nothing (``QuietDisplay``) or a progress bar
per policy (``ProgressDisplay``); the demo adds its own live table."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol

from benchmarks.load import RequestRecord


class Display(Protocol):
    def start_policy(self, policy: str, duration_s: float) -> None: ...

    def record(self, record: RequestRecord) -> None: ...

    def tick(self, elapsed_s: float) -> None: ...

    def end_policy(self, policy: str, status: str) -> None: ...

    def __enter__(self) -> Display: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None: ...


class QuietDisplay:
    def start_policy(self, policy: str, duration_s: float) -> None:
        pass

    def record(self, record: RequestRecord) -> None:
        pass

    def tick(self, elapsed_s: float) -> None:
        pass

    def end_policy(self, policy: str, status: str) -> None:
        pass

    def __enter__(self) -> QuietDisplay:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        pass


class ProgressDisplay:
    """A rich progress bar per policy: time through the run, requests sent, ok, errors."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.fields[policy]}"), BarColumn(bar_width=20),
                                 TextColumn("{task.completed:>4.0f}/{task.total:.0f} s"),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=console)
        self.task: Any = None
        self.counts = {"sent": 0, "ok": 0, "errors": 0, "late": 0}

    def __enter__(self) -> ProgressDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.progress.__exit__(exc_type, exc, traceback)

    def _counts_text(self) -> str:
        counts = self.counts
        return f"sent {counts['sent']} ok {counts['ok']} late {counts['late']} err {counts['errors']}"

    def start_policy(self, policy: str, duration_s: float) -> None:
        self.counts = {"sent": 0, "ok": 0, "errors": 0, "late": 0}
        self.task = self.progress.add_task("", total=duration_s, policy=policy, counts="starting the cluster")

    def record(self, record: RequestRecord) -> None:
        self.counts["sent"] += 1
        if record.ok:
            self.counts["ok"] += 1
            self.counts["late"] += 0 if record.deadline_met else 1
        else:
            self.counts["errors"] += 1

    def tick(self, elapsed_s: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=min(elapsed_s, self.progress.tasks[-1].total or elapsed_s),
                                 counts=self._counts_text())

    def end_policy(self, policy: str, status: str) -> None:
        if self.task is not None:
            text = self._counts_text() if status == "ran" else status
            self.progress.update(self.task, completed=self.progress.tasks[-1].total, counts=text)
