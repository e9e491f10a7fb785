"""Builds the tool-room components a profile names (store, engines, screens, sealer).

The agent, the CLI and every surface get their components here, so a profile is turned into
objects in one place.
"""

from __future__ import annotations

from agent.config import Profile
from tools.store import ImageStore


def open_store(profile: Profile) -> ImageStore:
    return ImageStore(profile.store.images_url(), profile.limits)
