"""REST API over stored conversations: list (paged), read with turns, delete.

With auth on, callers see only their own conversations and administrators see everyone's
(`?user=` narrows the list to one user). With auth off every caller is anonymous and sees all
(the gateway only allows auth off on loopback). A conversation that exists but belongs to
someone else answers 404, exactly like one that does not exist, so ids cannot be probed.

`create_app` sets `app.state.store` (a `ConversationStore`), `app.state.authenticator` and
`app.state.audio_log` (an `AudioLog`, or None when audio logs are off); DELETE removes the
conversation's WAVs with it.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from voxgate.gateway.auth import Identity, current_identity
from voxgate.store.base import ConversationRecord, ConversationStore

router = APIRouter(prefix="/api/conversations", tags=["conversations"])

#: Larger offsets are refused (422) before they reach the database, which cannot take them.
MAX_OFFSET = 2**31 - 1
#: One page of the list stays under this many bytes of JSON, whatever `limit` asks for.
MAX_PAGE_BYTES = 1024 * 1024

CallerDep = Annotated[Identity, Depends(current_identity)]


def _store(request: Request) -> ConversationStore:
    store: ConversationStore | None = getattr(request.app.state, "store", None)
    if store is None:
        raise HTTPException(status_code=503, detail="conversation storage is not available")
    return store


def _sees_everything(identity: Identity) -> bool:
    return identity.anonymous or identity.is_admin


async def _owned(
    request: Request, identity: Identity, conversation_id: str, *, with_turns: bool
) -> ConversationRecord:
    conv = await _store(request).get_conversation(conversation_id, with_turns=with_turns)
    if conv is None or not (_sees_everything(identity) or conv.user_id == identity.user_id):
        raise HTTPException(status_code=404, detail=f"no conversation with id {conversation_id!r}")
    return conv


@router.get("")
async def list_conversations(
    request: Request,
    identity: CallerDep,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")] = 0,
    user: Annotated[
        str | None, Query(max_length=255, description="only this user's (administrators)")
    ] = None,
) -> dict[str, Any]:
    """A page of conversations, newest first, with the total count."""
    if _sees_everything(identity):
        owner = user
    else:
        if user is not None and user != identity.user_id:
            raise HTTPException(
                status_code=403, detail="only administrators may list other users' conversations"
            )
        owner = identity.user_id
    items, total = await _store(request).list_conversations(owner, limit=limit, offset=offset)
    page: list[dict[str, Any]] = []
    size = 0
    for conv in items:
        entry = conv.to_json()
        size += len(orjson.dumps(entry))
        if page and size > MAX_PAGE_BYTES:
            break  # the rest is on the next page (`nextOffset`)
        page.append(entry)
    after = offset + len(page)
    return {
        "items": page,
        "total": total,
        "limit": limit,
        "offset": offset,
        "nextOffset": after if after < total else None,
    }


@router.get("/{conversation_id}")
async def get_conversation(
    request: Request, identity: CallerDep, conversation_id: str
) -> dict[str, Any]:
    """One conversation with all its turns in order."""
    conv = await _owned(request, identity, conversation_id, with_turns=True)
    return conv.to_json(with_turns=True)


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(
    request: Request, identity: CallerDep, conversation_id: str
) -> Response:
    """Delete a conversation, its turns and (when audio logging is on) its WAVs."""
    await _owned(request, identity, conversation_id, with_turns=False)
    if not await _store(request).delete_conversation(conversation_id):
        raise HTTPException(status_code=404, detail=f"no conversation with id {conversation_id!r}")
    audio_log = getattr(request.app.state, "audio_log", None)
    if audio_log is not None:
        try:
            audio_log.delete(conversation_id)
        except ValueError:
            pass  # an id that cannot name a folder never had audio written
    return Response(status_code=204)
