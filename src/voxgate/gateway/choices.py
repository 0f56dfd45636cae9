"""What a user may choose: the server's engines, narrowed by the token's `engines` claim.

One place for the rule, so `start` on `/ws`, the saved settings (`PUT /api/users/me/settings`)
and `/api/config` agree on it. (Models follow the same rule in `compat.policy.models_for`.)
"""

from __future__ import annotations

from voxgate.config import Settings
from voxgate.gateway.auth import Identity


def engines_for(settings: Settings, identity: Identity) -> list[str]:
    """The engines this user may pick: the server's (VOXGATE_ENGINE and
    VOXGATE_ALLOWED_ENGINES) that the token's `engines` claim names, in the server's order."""
    allowed = settings.engines_allowed_for_clients()
    if identity.engines is None:
        return allowed
    return [name for name in allowed if name in identity.engines]


def default_engine(settings: Settings, allowed: list[str], preferred: str | None = None) -> str | None:
    """The engine a `start` that names none gets: the user's saved one while they may still use
    it, else the server's default when they may use it, else the first they may; None if none."""
    if preferred in allowed:
        return preferred
    if settings.engine in allowed:
        return settings.engine
    return allowed[0] if allowed else None


__all__ = ["default_engine", "engines_for"]
