"""Human labels of the features, taken from the dbt docs (the manifest), for the reasons of a prediction.

A mart column's label is the first sentence of its ``description`` in the mart's ``.yml`` (doc blocks
rendered). A feature that is not a mart column (the on-demand ratios Feast derives) is labelled by the dbt doc
block of its own name (``dbt_project/docs/features.md``). Anything else keeps its name as its label.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from streamflow.core.names import FEATURE_MARTS
from streamflow.core.settings import Settings
from streamflow.features.contract import DBT_PACKAGE, ContractError, ensure_manifest, load_manifest

log = logging.getLogger("streamflow.features.labels")

_SENTENCE_END = re.compile(r"(?<=[a-z0-9)])\.(\s|$)|;")


def label_of(description: str) -> str:
    """The first sentence of a description, on one line, without its final period."""
    text = " ".join(description.split())
    end = _SENTENCE_END.search(text)
    return (text[: end.start()] if end else text).strip()


def feature_labels(manifest: dict[str, Any], features: list[str]) -> dict[str, str]:
    """``{feature: label}`` for every feature (its name when the docs describe it nowhere)."""
    described: dict[str, str] = {}
    nodes = manifest.get("nodes", {})
    for mart in FEATURE_MARTS:
        for name, column in (nodes.get(f"model.{DBT_PACKAGE}.{mart}", {}).get("columns") or {}).items():
            text = (column.get("description") or "").strip()
            if text and name not in described:
                described[name] = text
    docs = manifest.get("docs", {})
    out = {}
    for feature in features:
        text = described.get(feature) or (docs.get(f"doc.{DBT_PACKAGE}.{feature}", {}).get("block_contents") or "")
        out[feature] = label_of(text) if text.strip() else feature
    return out


def labels_from_docs(settings: Settings, features: list[str]) -> dict[str, str]:
    """The labels of ``features`` from the project's dbt manifest (parsed when missing); names alone, with a
    warning, when there is no manifest to read."""
    try:
        return feature_labels(load_manifest(ensure_manifest(settings)), features)
    except (ContractError, OSError, ValueError) as exc:
        log.warning("feature labels fall back to feature names: %s", exc)
        return {f: f for f in features}
