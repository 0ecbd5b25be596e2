"""The dbt warehouse from Python: dbt in-process, the quality gate, the monthly build, the docs."""
