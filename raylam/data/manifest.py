"""The dataset manifest's name, format tag and reader: what every reader of a dataset needs,
without importing the collection job (and through it MuJoCo) into training processes."""

from __future__ import annotations

from typing import Any

from raylam.config import UserError
from raylam.data.storage import Location

MANIFEST = "manifest.json"
PLAN = "collect_config.json"
FORMAT = "raylam-webdataset/1"


class ManifestError(UserError, ValueError):
    """A file named manifest.json that is not a raylam dataset's: one line from the CLI."""


def load_manifest(location: Location) -> dict[str, Any]:
    if not location.exists(MANIFEST):
        raise FileNotFoundError(
            f"{location.url(MANIFEST)} does not exist: not a raylam dataset, or its collection has not finished"
        )
    manifest = location.read_json(MANIFEST)
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{location.url(MANIFEST)}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest
