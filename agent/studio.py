"""Opens the image store a profile names (`open_store`).

The agent, the CLI and every surface open their store here, so a profile's store settings are
turned into an `ImageStore` in one place.
"""

from __future__ import annotations

from agent.config import Profile
from tools.store import ImageStore


def open_store(profile: Profile) -> ImageStore:
    return ImageStore(profile.store.images_url(), profile.limits)
