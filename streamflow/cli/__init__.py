"""The `streamflow` command line (entry point: :data:`streamflow.cli.main.app`).

Command modules import the library layers inside each command: `streamflow --help` and the light
commands must not pay for importing Feast, MLflow, dbt or Evidently (several seconds each).
"""
