"""A run directory: config.json, metrics.csv, summary.json, checkpoint.pt (docs/records.md).

Every whole-file write goes to a temporary name and is renamed into place (`ntng.files`), so a reader (or a resume after a kill)
sees either the old file or the new one, never half of one. metrics.csv is appended row by row; a resume first
cuts it back to the rows its checkpoint knows about.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ntng.errors import RunError
from ntng.files import remove_temporaries, write_bytes_atomic

METRIC_COLUMNS = ("step", "rst_s", "wall_s", "tokens", "train_loss", "lr", "active_layers", "val_loss", "val_floor")
# records made before the evaluation set had its own floor (ntng.training.evaluation): read with val_floor empty
LEGACY_METRIC_COLUMNS = METRIC_COLUMNS[:-1]
STATUSES = ("running", "complete", "diverged", "failed")


def write_json(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"missing {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"corrupt {path}: {exc}") from None
    if not isinstance(value, dict):
        raise RunError(f"corrupt {path}: a JSON object was expected, found {type(value).__name__}")
    return value


# The losses are float32 arithmetic and the clocks count seconds: 7 significant digits keep every value the book
# shows or plots, in ~60% of the bytes of Python's full float repr (the committed records: 37.8 MB -> 22.0 MB)
METRIC_DIGITS = 7


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{METRIC_DIGITS}g}" if math.isfinite(value) else str(value)
    return str(value)


def compact_metrics(path: Path) -> bool:
    """Rewrite a metrics.csv written with full float reprs (records made before METRIC_DIGITS) as the writer now
    writes it: same header, same rows, each number through `format_cell`. A damaged file is refused (`Unreadable`),
    never rewritten. Returns whether the file changed."""
    read_metrics_checked(path)  # refuses a damaged file before anything is written
    text = path.read_text()
    lines = list(csv.reader(io.StringIO(text)))
    out = io.StringIO()
    out.write(",".join(lines[0]) + "\n")
    for cells in lines[1:]:
        out.write(",".join(_compact_cell(c) for c in cells) + "\n")
    if out.getvalue() == text:
        return False
    write_bytes_atomic(path, out.getvalue().encode())
    return True


def _compact_cell(text: str) -> str:
    if text == "" or text.lstrip("-").isdigit():
        return text  # empty (no evaluation on this row) or an integer (step, tokens): kept as written
    return format_cell(float(text))


class Unreadable(Exception):
    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def _number(text: str):
    return float(text) if text != "" else math.nan


def read_metrics_checked(path: Path, steps: int | None = None):
    """metrics.csv as a DataFrame, refusing a damaged file: wrong header, a row cut short (no final newline, too
    few cells), a cell that is not a number, steps out of order, or (when `steps` is given, for a complete run)
    fewer rows than the summary's optimizer steps. Returns a pandas DataFrame."""
    import pandas as pd

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise Unreadable(path.name, "missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(path.name, f"cannot be read ({exc})") from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or tuple(lines[0]) not in (METRIC_COLUMNS, LEGACY_METRIC_COLUMNS):
        raise Unreadable(path.name, "unexpected header")
    columns = tuple(lines[0])
    if not text.endswith("\n"):
        raise Unreadable(path.name, f"truncated (row {len(lines) - 1} is cut short)")
    rows = []
    for number, cells in enumerate(lines[1:], start=1):
        if len(cells) != len(columns):
            raise Unreadable(path.name, f"truncated (row {number} has {len(cells)} of {len(columns)} cells)")
        try:
            rows.append([_number(c) for c in cells])
        except ValueError:
            raise Unreadable(path.name, f"row {number} holds a value that is not a number") from None
    frame = pd.DataFrame(rows, columns=list(columns)).reindex(columns=list(METRIC_COLUMNS))
    if frame["step"].isna().any() or (frame["step"].diff().dropna() < 0).any():
        raise Unreadable(path.name, "steps missing or out of order")
    if steps is not None and (frame.empty or int(frame["step"].iloc[-1]) != int(steps)):
        last = "no rows" if frame.empty else f"last step {int(frame['step'].iloc[-1])}"
        raise Unreadable(path.name, f"truncated ({last}, summary.json says {steps} steps)")
    return frame


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def remove_temporaries(self) -> None:
        """Half-written files of a killed writer (`.<name>.tmp-<pid>`): never read, safe to drop."""
        remove_temporaries(self.path)

    def write_config(self, config: dict) -> None:
        write_json(self.config_path, config)

    def read_config(self) -> dict:
        return read_json(self.config_path)

    def write_summary(self, summary: dict) -> None:
        assert summary["status"] in STATUSES, summary["status"]
        write_json(self.summary_path, summary)

    def read_summary(self) -> dict:
        return read_json(self.summary_path)

    # --- metrics ------------------------------------------------------------------------------------------
    def start_metrics(self) -> None:
        write_bytes_atomic(self.metrics_path, (",".join(METRIC_COLUMNS) + "\n").encode())

    def append_metrics(self, row: dict) -> None:
        line = ",".join(format_cell(row.get(c)) for c in METRIC_COLUMNS) + "\n"
        with open(self.metrics_path, "a") as fh:
            fh.write(line)
            fh.flush()

    def read_metrics(self) -> list[dict]:
        try:
            text = self.metrics_path.read_text()
        except FileNotFoundError:
            raise RunError(f"missing {self.metrics_path}") from None
        rows = list(csv.DictReader(io.StringIO(text)))
        if not text.startswith(",".join(METRIC_COLUMNS)):
            raise RunError(f"corrupt {self.metrics_path}: unexpected header")
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the header and the rows of steps <= last_step (a resume replays what came after)."""
        kept = [r for r in self.read_metrics() if r.get("step", "").isdigit() and int(r["step"]) <= last_step
                and None not in r and all(r.get(c) is not None for c in METRIC_COLUMNS)]  # no row cut short
        buf = io.StringIO()
        buf.write(",".join(METRIC_COLUMNS) + "\n")
        for r in kept:
            buf.write(",".join(r.get(c) or "" for c in METRIC_COLUMNS) + "\n")
        write_bytes_atomic(self.metrics_path, buf.getvalue().encode())

    # --- checkpoint ---------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        import torch  # here, not at the top: reading records (the book) needs no torch

        buf = io.BytesIO()
        torch.save(state, buf)
        write_bytes_atomic(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict:
        import torch

        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise RunError(f"missing {self.checkpoint_path}: nothing to resume from") from None
        except Exception as exc:  # torch raises many kinds on a damaged file
            raise RunError(f"corrupt {self.checkpoint_path}: {type(exc).__name__}") from None


def read_metrics(run_dir: str | Path):
    """metrics.csv of a run as a pandas DataFrame (empty cells -> NaN); a damaged file is an error naming it."""
    path = Path(run_dir) / "metrics.csv"
    try:
        return read_metrics_checked(path)
    except Unreadable as exc:
        raise RunError(f"{'missing' if exc.reason == 'missing' else 'corrupt'} {path}: {exc.reason}") from None
