"""The `streamflow` command: one entry point, one sub-module per command group.

Each group's module defines its commands; this module only assembles them. Errors a user can act on
are rendered once, by :class:`~streamflow.cli.console.StreamflowGroup`.
"""

from __future__ import annotations

import typer

from streamflow.cli import data, demo, features, models, orchestration, serve, stack, warehouse
from streamflow.cli.console import StreamflowGroup

app = typer.Typer(
    cls=StreamflowGroup,
    help="StreamFlow: churn prediction from monthly data drops (dbt, Feast, MLflow, FastAPI, Airflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)

# in the order of the data flow, as `streamflow --help` lists them
app.add_typer(stack.stack_app, name="stack")
app.command("generate")(data.generate_cmd)
app.command("ingest")(data.ingest_cmd)
app.command("build")(warehouse.build_cmd)
app.command(
    "dbt", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)(warehouse.dbt_cmd)
app.command("docs")(warehouse.docs_cmd)
app.add_typer(features.features_app, name="features")
app.command("dataset")(features.dataset_cmd)
app.command("train")(models.train_cmd)
app.command("promote")(models.promote_cmd)
app.add_typer(models.model_app, name="model")
app.command("drift")(models.drift_cmd)
app.command("score")(models.score_cmd)
app.command("evaluate")(models.evaluate_cmd)
app.command("mlflow")(models.mlflow_cmd)
app.command("run")(orchestration.run_cmd)
app.command("airflow")(orchestration.airflow_cmd)
app.command("serve")(serve.serve_cmd)
app.command("demo")(demo.demo_cmd)
app.command("stop")(stack.stop_cmd)


def main() -> None:  # pragma: no cover - console entry
    app()
