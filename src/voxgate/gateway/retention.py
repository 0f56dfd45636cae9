"""Stored data does not grow without end: conversations expire, and each user has a quota.

- Retention (`VOXGATE_RETENTION_DAYS`): a periodic sweep deletes conversations whose last
  activity is older than the retention, turns and WAVs together, in batches so one sweep never
  holds the database for long.
- Quota (`VOXGATE_MAX_CONVERSATIONS_PER_USER`): a user who already has that many stored
  conversations gets no new session until some are deleted or expire; refusing is the only
  choice that loses nothing without the user's say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from voxgate.gateway.state import GatewayState

log = logging.getLogger("voxgate.retention")

#: How often the sweep runs at most (and at least every tenth of the retention).
SWEEP_INTERVAL_S = 3600.0
_BATCH = 500


async def expire_once(state: GatewayState) -> int:
    """Delete what is past the retention now; -> how many conversations went."""
    days = state.settings.retention_days
    if days <= 0:
        return 0
    before = datetime.now(UTC) - timedelta(days=days)
    removed = 0
    while True:
        ids = await state.store.expire_conversations(before, limit=_BATCH)
        audio_log = state.audio_log
        if audio_log is not None:
            for conversation_id in ids:
                with contextlib.suppress(ValueError):  # an id that never named a folder
                    await asyncio.to_thread(audio_log.delete, conversation_id)
        removed += len(ids)
        if len(ids) < _BATCH:
            break
    if removed:
        log.info("retention: deleted %d conversation(s) older than %g day(s)", removed, days)
    return removed


async def retention_loop(state: GatewayState) -> None:
    """Sweep at start and then periodically, for as long as the app runs (cancelled on exit)."""
    retention_s = state.settings.retention_days * 86400.0
    interval = min(SWEEP_INTERVAL_S, max(1.0, retention_s / 10))
    while True:
        try:
            await expire_once(state)
        except Exception:
            # A database hiccup must not end the sweep for good: the next round retries.
            log.exception("retention sweep failed; retrying in %.0f s", interval)
        await asyncio.sleep(interval)


async def quota_refusal(state: GatewayState, user_id: str) -> str | None:
    """Why `user_id` may not start another conversation, or None."""
    quota = state.settings.max_conversations_per_user
    if quota <= 0:
        return None
    try:
        _, total = await asyncio.wait_for(state.store.list_conversations(user_id, limit=1), 5.0)
    except Exception:
        # The store being down is not the user's quota: the session's own writes will say so.
        log.warning("could not count %s's conversations; quota not checked", user_id)
        return None
    if total < quota:
        return None
    return (
        f"you have {total} stored conversations, the limit per user is {quota} "
        "(VOXGATE_MAX_CONVERSATIONS_PER_USER): delete some (DELETE /api/conversations/{id}) "
        "before starting another"
    )


__all__ = ["expire_once", "quota_refusal", "retention_loop"]
