"""`/api/users/me/settings`: a user's saved voice, instructions, personality and engine.

Saved settings are the defaults for that user's sessions: a `start` that leaves `voice`,
`instructions`, `personality` or `engine` out gets the saved value, so an app can let people
set up their assistant once instead of sending the same fields on every connection. A saved
engine must be one the user may use (the server's engines, narrowed by the token's `engines`
claim); should that change later, their sessions fall back to the default engine. Only authenticated users
have settings: with auth off every connection is a fresh anonymous user, so there is no one to
save them for.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from voxgate.gateway.auth import Identity, current_identity
from voxgate.gateway.choices import engines_for
from voxgate.protocol import ErrorCode, Personality
from voxgate.store.base import ConversationStore, UserSettings

router = APIRouter(prefix="/api/users", tags=["users"])


class SettingsBody(BaseModel):
    """Every field optional; `null` clears a saved value."""

    model_config = ConfigDict(extra="forbid")

    voice: str | None = Field(None, max_length=100)
    instructions: str | None = Field(None, max_length=32_000)
    personality: Personality | None = None
    #: The engine for sessions whose `start` names none; one this user may use.
    engine: str | None = Field(None, min_length=1, max_length=64)


def _user(identity: Identity) -> str:
    if identity.anonymous:
        raise HTTPException(
            403,
            "settings belong to authenticated users: with VOXGATE_AUTH=none every connection is "
            "a new anonymous user",
        )
    return identity.user_id


def _shape(settings: UserSettings | None, user_id: str) -> dict[str, Any]:
    return {
        "userId": user_id,
        "voice": settings.voice if settings else None,
        "instructions": settings.instructions if settings else None,
        "personality": settings.personality if settings else None,
        "engine": settings.engine if settings else None,
    }


@router.get("/me/settings")
async def get_settings(
    request: Request, identity: Identity = Depends(current_identity)
) -> dict[str, Any]:
    user_id = _user(identity)
    store: ConversationStore = request.app.state.store
    return _shape(await store.get_user_settings(user_id), user_id)


@router.put("/me/settings")
async def put_settings(
    body: SettingsBody, request: Request, identity: Identity = Depends(current_identity)
) -> Any:
    user_id = _user(identity)
    store: ConversationStore = request.app.state.store
    allowed = engines_for(request.app.state.settings, identity)
    if body.engine is not None and body.engine not in allowed:
        whose = "for this user" if identity.engines is not None else "on this server"
        return JSONResponse(
            {
                "detail": f"engine '{body.engine[:64]}' is not allowed {whose}; allowed: "
                f"{', '.join(allowed) or 'none'}",
                "code": ErrorCode.BAD_REQUEST.value,
            },
            status_code=400,
        )
    personality = body.personality.model_dump(exclude_none=True) if body.personality else None
    saved = UserSettings(
        user_id=user_id,
        voice=body.voice,
        instructions=body.instructions,
        personality=personality or None,
        engine=body.engine,
    )
    await store.save_user_settings(saved)
    return _shape(saved, user_id)
