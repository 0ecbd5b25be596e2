"""What `make demo` prints for its prediction: the curl asks for reasons, and the answer's reasons read as sentences."""

from __future__ import annotations

import inspect
import io

from rich.console import Console

from streamflow.cli import demo

ANSWER = {
    "user_id": "7590-VHVEG",
    "churn_probability": 0.7312,
    "churn": True,
    "threshold": 0.42,
    "model_version": 3,
    "reasons": {
        "base": -1.1,
        "margin": 1.0,
        "up": [
            {"feature": "contract_type", "label": "Contract type.", "value": "Month-to-month", "contribution": 0.91},
            {"feature": "failed_payments_90d", "label": "Failed payments.", "value": 2, "contribution": 0.35},
        ],
        "down": [{"feature": "months_active", "label": "Months subscribed.", "value": 40, "contribution": -0.52}],
    },
}


def printed(answer: dict) -> str:
    out = io.StringIO()
    demo._print_reasons(Console(file=out, width=200), answer)
    return out.getvalue()


def test_the_demo_prints_the_prediction_and_its_reasons_up_then_down():
    text = printed(ANSWER)
    assert "7590-VHVEG: churn probability 73.1%, likely to churn (threshold 42.0%, model v3)" in text
    lines = [line for line in text.splitlines() if "risk" in line and "(" in line]
    assert [line.split("│")[1].strip() for line in lines] == ["pushes risk up", "pushes risk up", "holds risk down"]
    assert "Contract type. (contract_type)" in lines[0] and "Month-to-month" in lines[0] and "+0.910" in lines[0]
    assert "Months subscribed. (months_active)" in lines[2] and "-0.520" in lines[2]


def test_a_prediction_without_reasons_says_so():
    assert "gives no reasons" in printed({**ANSWER, "churn": False, "reasons": None})
    assert "likely to stay" in printed({**ANSWER, "churn": False, "reasons": None})


def test_the_demo_asks_the_api_for_reasons_and_shows_that_in_its_curl():
    source = inspect.getsource(demo._serve_and_predict)
    assert source.count("/predict?reasons={DEMO_REASONS}") == 2 and demo.DEMO_REASONS == 3
