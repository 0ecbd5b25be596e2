"""The prediction API (FastAPI): the app factory, one router per resource, the served model."""
