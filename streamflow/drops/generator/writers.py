"""Writing drops: CSV columns from arrays (bools, fixed-point, dates, timestamps, serials), the
CSV sink and the manifest."""

from __future__ import annotations

import hashlib
import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamflow.drops import contract
from streamflow.drops.generator.params import DAY, as_of, month_start

# ---------------------------------------------------------------------------------------
# CSV writing
# ---------------------------------------------------------------------------------------
_FALSE_TRUE = pa.array(["false", "true"])
_TIME_OF_DAY: pa.StringArray | None = None


def _time_of_day() -> pa.StringArray:
    """'HH:MM:SSZ' for every second of a day."""
    global _TIME_OF_DAY
    if _TIME_OF_DAY is None:
        s = np.arange(DAY)
        h, mi, se = s // 3600, s // 60 % 60, s % 60
        out = np.empty((DAY, 9), dtype=np.uint8)
        out[:, 0], out[:, 1] = h // 10 + 48, h % 10 + 48
        out[:, 3], out[:, 4] = mi // 10 + 48, mi % 10 + 48
        out[:, 6], out[:, 7] = se // 10 + 48, se % 10 + 48
        out[:, 2] = out[:, 5] = 58
        out[:, 8] = 90
        _TIME_OF_DAY = pc.cast(pa.array(out.view("S9").ravel(), pa.binary(9)), pa.string())
    return _TIME_OF_DAY


def _bools(x: np.ndarray) -> pa.Array:
    return _FALSE_TRUE.take(pa.array(np.asarray(x, dtype=np.int8)))


def _ints(x: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(np.asarray(x, dtype=np.int64)), pa.string())


def _fixed(scaled: np.ndarray, places: int) -> pa.Array:
    """Non-negative integers scaled by 10**places -> '12.34'."""
    whole, frac = np.divmod(np.asarray(scaled, dtype=np.int64), 10**places)
    return pc.binary_join_element_wise(_ints(whole), pc.utf8_lpad(_ints(frac), places, "0"), ".")


def _choice(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.array(values).take(pa.array(np.asarray(codes, dtype=np.int64)))


def _dates(epoch_days: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(np.asarray(epoch_days, dtype=np.int32), pa.date32()), pa.string())


def _serials(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(_ints(numbers), width, "0"), "")


class _Timestamps:
    """Seconds into a month -> ISO 8601 UTC strings (`2024-01-05T13:22:10Z`); negative -> empty."""

    def __init__(self, month: int) -> None:
        first = month_start(month)
        self.days = pa.array([(first + timedelta(days=i)).isoformat() + "T" for i in range(as_of(month).day)])

    def __call__(self, seconds: np.ndarray) -> pa.Array:
        seconds = np.asarray(seconds, dtype=np.int64)
        missing = seconds < 0
        day, sod = np.divmod(np.where(missing, 0, seconds), DAY)
        mask = missing if missing.any() else None
        day_str = self.days.take(pa.array(day, mask=mask))
        return pc.binary_join_element_wise(day_str, _time_of_day().take(pa.array(sod)), "")


class CsvSink:
    """A CSV file written in chunks, counting rows and hashing the bytes as they are written."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path = path
        self.rows = 0
        self._sha = hashlib.sha256()
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._write((",".join(header) + "\n").encode())

    def _write(self, data) -> None:
        self._sha.update(data)
        self._fh.write(data)

    def write(self, columns: list[pa.Array]) -> None:
        n = len(columns[0])
        if n == 0:
            return
        rows = pc.binary_join_element_wise(*columns, ",", null_handling="replace", null_replacement="")
        lines = pc.binary_join_element_wise(rows, "\n", "")
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + n + 1]
        self._write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])
        self.rows += n

    def close(self) -> dict:
        self._fh.close()
        return {"path": self.path.name, "rows": self.rows, "sha256": self._sha.hexdigest()}


def write_manifest(folder: Path, as_of_date: date, files: dict[str, dict]) -> Path:
    """manifest.json: format version, as_of, and every file's rows (header excluded) and sha256."""
    ordered = {name: files[name] for name in contract.FILES}
    doc = {"format_version": contract.FORMAT_VERSION, "as_of": as_of_date.isoformat(), "files": ordered}
    path = folder / contract.MANIFEST
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
