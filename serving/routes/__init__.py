"""One router per resource, in the order the OpenAPI schema lists them."""

from __future__ import annotations

from serving.routes import features, model, operations, predictions

ROUTERS = (predictions.router, features.router, model.router, operations.router)
