"""What an import did: the :class:`ImportReport` and the report file of rows not imported."""

from __future__ import annotations

import json
import math
import os
import typing as t
from dataclasses import dataclass

from ._errors import ImportSetupError

__all__ = ["FailedRows", "ImportReport"]


@dataclass
class ImportReport:
    """What an import did. Counts are rows of this run unless said otherwise."""

    path: str
    #: Rows read in this run (not counting those skipped thanks to the checkpoint).
    read: int = 0
    #: Rows Mixpanel accepted.
    sent: int = 0
    #: Rows Mixpanel refused (``failed_records``, or a batch refused as a whole).
    refused: int = 0
    #: Rows not sent: Mixpanel still failing after ``max_retries``, or the run was interrupted.
    unsent: int = 0
    #: Rows rejected before sending (see the report for why).
    rejected_locally: int = 0
    #: Rows done by an earlier run, skipped thanks to the checkpoint.
    skipped_by_checkpoint: int = 0
    #: Report lines kept from an earlier run (rows before the checkpoint that failed then).
    earlier_failures: int = 0
    batches: int = 0
    #: Every row was handled: the checkpoint is marked complete.
    complete: bool = False
    #: Stopped by Ctrl-C (``KeyboardInterrupt``); the checkpoint says where to resume.
    interrupted: bool = False
    elapsed: float = 0.0
    #: The report of rows not imported, or ``None`` when there is nothing to report.
    failed_report: str | None = None
    checkpoint: str | None = None

    @property
    def failed(self) -> int:
        """Rows that were sent but not imported: refused plus unsent."""
        return self.refused + self.unsent

    @property
    def ok(self) -> bool:
        """True when every row of the input is in Mixpanel."""
        return self.complete and not (self.failed or self.rejected_locally or self.earlier_failures)

    def summary(self) -> str:
        """One line for humans."""
        rate = self.read / self.elapsed if self.elapsed else 0.0
        text = (
            f"{os.path.basename(self.path)}: imported {self.sent:,} of {self.read:,} rows"
            f" ({rate:,.0f} rows/s); refused by Mixpanel {self.refused:,}, not sent"
            f" {self.unsent:,}, rejected before sending {self.rejected_locally:,}; skipped"
            f" {self.skipped_by_checkpoint:,} done by an earlier run"
        )
        if self.earlier_failures:
            text += f" ({self.earlier_failures:,} of which failed then)"
        if self.failed_report:
            text += f"; failures: {self.failed_report}"
        if self.interrupted:
            text += "; interrupted: run the same command again to resume"
        elif self.unsent:
            text += "; run the same command again to retry what was not sent"
        return text


class FailedRows:
    """The report of rows not imported (``<input>.failed.jsonl``), opened at its first line."""

    def __init__(self, path: str, report: ImportReport) -> None:
        self.path = path
        self.report = report
        self._file: t.TextIO | None = None

    def start(self, resuming: bool, done_line: int) -> None:
        """Keep the report lines of rows before the checkpoint; drop the rest (redone now).

        ``done_line``: the last input line the checkpoint covers.
        """
        try:
            self._start(resuming, done_line)
        except OSError as exc:
            raise ImportSetupError(
                f"cannot use the report {self.path} ({exc.strerror or exc}): it must be a file"
                " in a folder this user can write to"
            ) from None

    def _start(self, resuming: bool, done_line: int) -> None:
        kept: list[str] = []
        if resuming:
            try:
                # A damaged line (even one not UTF-8) is dropped, not a reason to stop.
                with open(self.path, encoding="utf-8", errors="replace") as old:
                    kept = [text for text in old if _line_of(text) <= done_line]
            except FileNotFoundError:
                pass
        if kept:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
            self._file.writelines(kept)
            self.report.earlier_failures = len(kept)
            self.report.failed_report = self.path
        elif os.path.exists(self.path):
            os.remove(self.path)

    def write(self, status: str, line: int, error: str, row: object) -> None:
        """Report one row that was not imported."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self.report.failed_report = self.path
        entry = {"line": line, "status": status, "error": error, "row": row}
        try:
            text = json.dumps(entry)
        except RecursionError:
            # A row parsed from the input may nest deeper than json.dumps() recurses: its line
            # number says where it is.
            entry["row"] = None
            entry["error"] = f"{error} (the row nests too deep to be written here)"
            text = json.dumps(entry)
        self._file.write(text + "\n")

    def flush(self) -> None:
        """Write out what is reported so far."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Close the report file, if one was opened."""
        if self._file is not None:
            self._file.close()


def _line_of(report_line: str) -> float:
    """The input line a report line is about (infinity when unreadable: dropped on resume)."""
    try:
        return float(json.loads(report_line)["line"])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return math.inf
