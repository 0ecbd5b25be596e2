"""The generator's entry point: :func:`generate` (what ``streamflow generate`` calls) stages every
month's drop and the oracle, then publishes them together."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from streamflow.core.progress import SILENT, Progress
from streamflow.drops import contract
from streamflow.drops.generator import params
from streamflow.drops.generator.customers import RealCustomers, load_real_customers
from streamflow.drops.generator.hazard import fit_hazard
from streamflow.drops.generator.params import (
    MAX_MONTHS,
    MAX_USERS,
    ORACLE_DIR,
    RETIRED_DIR,
    STAGING_DIR,
    GenerateError,
    as_of,
    drop_name,
    oracle_name,
)
from streamflow.drops.generator.simulation import MonthStats, _MonthPlan, _Simulation
from streamflow.drops.generator.writers import CsvSink, _bools, _fixed, _Timestamps, write_manifest


@dataclass
class GenerateResult:
    out: Path
    months: list[MonthStats] = field(default_factory=list)

    @property
    def oracle_dir(self) -> Path:
        return self.out / ORACLE_DIR


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def validate_arguments(out: Path, months: int, users: int, seed: int, drift_at: int | None) -> None:
    """Raise GenerateError with a specific message for any bad argument."""
    if not 1 <= months <= MAX_MONTHS:
        raise GenerateError(f"--months must be between 1 and {MAX_MONTHS}, got {months}")
    if not 1 <= users <= MAX_USERS:
        raise GenerateError(f"--users must be between 1 and {MAX_USERS:,}, got {users}")
    if seed < 0:
        raise GenerateError(f"--seed must be >= 0, got {seed}")
    if drift_at is not None and not 1 <= drift_at <= months - 1:
        if months < 2:
            raise GenerateError(
                f"--drift-at needs at least 2 months (drift starts at a month K in [1, months-1]), "
                f"got --months {months}"
            )
        raise GenerateError(f"--drift-at must be between 1 and {months - 1} (months - 1), got {drift_at}")
    if out.exists() and not out.is_dir():
        raise GenerateError(f"output path {out} exists and is not a folder")


def _prepare_output(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = out / STAGING_DIR
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        probe = staging / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GenerateError(f"output path {out} is not writable: {exc.strerror or exc}") from exc
    return staging


def _publish(out: Path, staging: Path, months: int) -> None:
    """Swap the staged drops and oracle in, replacing earlier ones (and later months of an earlier run)."""
    retired = out / RETIRED_DIR
    if retired.exists():
        shutil.rmtree(retired)
    retired.mkdir()
    names = [drop_name(m) for m in range(months)] + [ORACLE_DIR]
    stale = sorted(
        p.name for p in out.glob("month_[0-9][0-9][0-9]") if p.name not in names and (p / contract.MANIFEST).exists()
    )
    for name in names + stale:
        if (out / name).exists():
            os.replace(out / name, retired / name)
    for name in names:
        os.replace(staging / name, out / name)
    shutil.rmtree(retired)
    shutil.rmtree(staging)


def generate(
    out: Path, months: int, users: int, seed: int, drift_at: int | None = None, progress: Progress = SILENT
) -> GenerateResult:
    """Write drops ``out/month_000 .. month_{months-1}`` and ``out/oracle``; same arguments, same bytes."""
    out = Path(out)
    validate_arguments(out, months, users, seed, drift_at)
    real = load_real_customers()
    staging = _prepare_output(out)
    try:
        result = _run(out, staging, real, months, users, seed, drift_at, progress)
        _publish(out, staging, months)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _chunks(n: int) -> Iterator[tuple[int, slice]]:
    for part, lo in enumerate(range(0, n, params.CHUNK_USERS)):
        yield part, slice(lo, min(n, lo + params.CHUNK_USERS))


def _run(
    out: Path,
    staging: Path,
    real: RealCustomers,
    months: int,
    users: int,
    seed: int,
    drift_at: int | None,
    progress: Progress,
) -> GenerateResult:
    hazard = fit_hazard(real)
    sim = _Simulation(real, hazard, users, seed, drift_at)
    result = GenerateResult(out)
    oracle = staging / ORACLE_DIR
    oracle.mkdir()
    for month in range(months):
        result.months.append(_month(sim, month, staging, oracle, progress))
    return result


def _month(sim: _Simulation, month: int, staging: Path, oracle: Path, progress: Progress) -> MonthStats:
    """Simulate one month and write its drop folder and its oracle file; then decide who churns."""
    plan, labelled, labels = sim.plan_month(month)
    sim.draw_behaviour(plan)
    active, prob = sim.churn_probability(plan)
    n_chunks = -(-len(plan.present) // params.CHUNK_USERS)
    progress.start(f"{drop_name(month)} ({as_of(month)})", total=n_chunks + 2)
    folder = staging / drop_name(month)
    folder.mkdir()
    sinks = {name: CsvSink(folder / spec.filename, spec.header) for name, spec in contract.FILES.items()}
    sim.write_users(sinks["users"], len(sim.pop))
    sim.write_subscriptions(sinks["subscriptions"], active)
    progress.advance()
    stamp = _Timestamps(month)
    counters = {"sessions": 0, "payments": 0, "tickets": 0}
    for part, sl in _chunks(len(plan.present)):
        sim.write_events(plan, part, sl, sinks, counters, stamp)
        progress.advance()
    if month > 0:
        sinks["labels"].write(
            [
                sim.pop.id_str.take(pa.array(labelled)),
                pa.array([as_of(month - 1).isoformat()] * len(labelled)),
                _bools(labels),
            ]
        )
    write_manifest(folder, as_of(month), {name: sink.close() for name, sink in sinks.items()})
    _write_oracle(sim, oracle / oracle_name(month), active, prob)
    sim.decide_churn(month, active, prob)
    progress.advance()
    return _month_stats(plan, len(active), labels, counters)


def _write_oracle(sim: _Simulation, path: Path, active: np.ndarray, prob: np.ndarray) -> None:
    """Each active user's true probability of cancelling during the next month."""
    sink = CsvSink(path, ["user_id", "churn_probability"])
    sink.write([sim.pop.id_str.take(pa.array(active)), _fixed(np.rint(prob * 1e6), 6)])
    sink.close()


def _month_stats(plan: _MonthPlan, subscribers: int, labels: np.ndarray, counters: dict[str, int]) -> MonthStats:
    return MonthStats(
        month=plan.month,
        as_of=as_of(plan.month),
        subscribers=subscribers,
        new_users=int(plan.signed_up.sum()) if plan.month > 0 else 0,
        cancelled=int((~plan.staying).sum()),
        labelled=len(labels),
        label_churn_rate=float(labels.mean()) if len(labels) else None,
        sessions=counters["sessions"],
        payments=counters["payments"],
        tickets=counters["tickets"],
    )
