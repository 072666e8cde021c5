"""Where georeferencing takes the map's up direction from (a CLI choice and a job-file value)."""
from __future__ import annotations

from enum import Enum


class Gravity(str, Enum):
    """auto: from the cameras when they are upright; images: from the cameras (required); none: not used."""

    auto = "auto"
    images = "images"
    none = "none"
