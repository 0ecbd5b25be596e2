"""The feature store: Feast on the dbt marts, in business time.

- :func:`feature_store` builds Feast's configuration from the platform's settings: SQL registry in
  PostgreSQL, PostgreSQL offline store (the marts), PostgreSQL online store by default or Redis.
- :func:`apply` registers ``feature_repo/`` (the same definitions the ``feast`` CLI reads).
- :func:`materialize` loads one month into the online store, incrementally, and then removes the
  users who are no longer active, so the online store holds exactly the users active at that month.
- :func:`training_frame` and :func:`feature_frame` join features point-in-time with Feast.
- :func:`~streamflow.features.online.online_read` is the one online read path (values, the as_of of
  every view, judged by one staleness rule), used by the API, the CLI and the tests.
- :func:`push_usage_event` updates real-time usage online at once and records it offline.

All time is business time: a mart row carries ``as_of`` = 00:00 UTC of its month-end date, and the
month the online store serves (recorded in the run log by materialization) is the :func:`business_clock`
staleness is measured against.
"""
