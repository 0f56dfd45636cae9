"""`ReconnectAudioBuffer`, the one place every reconnecting engine keeps user audio across a
reconnect: what it keeps of the audio sent before the drop, its bound, its order, its reports."""

from __future__ import annotations

from voxgate.engines.base import HeldAudioKind
from voxgate.engines.upstream import COMMIT, ReconnectAudioBuffer

RATE_BYTES = 2000  # 1000 samples a second: 20 ms is 40 bytes, 1 s is 2000 bytes


def frame(i: int) -> bytes:
    """20 ms of distinguishable audio (every frame differs, so order is checkable)."""
    return bytes([i % 256, i // 256 % 256]) * 20


def make(seconds: float = 1.0) -> tuple[ReconnectAudioBuffer, dict[str, float]]:
    reports: dict[str, float] = {}

    def report(kind: HeldAudioKind, value: float) -> None:
        reports[kind] = reports.get(kind, 0.0) + value

    buf = ReconnectAudioBuffer(seconds, report)
    buf.configure(RATE_BYTES)
    return buf, reports


def replay(buf: ReconnectAudioBuffer) -> list[object]:
    items: list[object] = []
    while (item := buf.next_held()) is not None:
        items.append(item)
    buf.finish()
    return items


def test_between_utterances_only_a_preroll_of_what_was_sent_is_kept() -> None:
    buf, _ = make(seconds=10.0)  # pre-roll is 1 s = 50 frames
    for i in range(200):
        buf.sent(frame(i))
    buf.begin()
    assert replay(buf) == [frame(i) for i in range(150, 200)]


def test_an_utterance_in_progress_is_kept_whole_and_what_was_committed_is_not() -> None:
    buf, _ = make(seconds=10.0)
    for i in range(100):
        buf.sent(frame(i))
    buf.speech(True)
    for i in range(100, 300):  # 4 s of speech: more than the pre-roll
        buf.sent(frame(i))
    buf.committed(position=40 * 120)  # the provider took frames 0..119 into a turn
    buf.begin()
    assert replay(buf) == [frame(i) for i in range(120, 300)]


def test_held_audio_is_bounded_oldest_first_and_the_overflow_is_told_once() -> None:
    buf, reports = make(seconds=1.0)
    buf.sent(frame(0))  # the tail sent before the drop counts too
    buf.begin()
    told = [buf.hold(frame(i)) for i in range(1, 101)]
    assert told.count(True) == 1 and told.index(True) == 49  # 51 frames no longer fit
    assert buf.held_seconds == 1.0
    assert replay(buf) == [frame(i) for i in range(51, 101)]
    assert reports == {"buffered": 2.02, "replayed": 1.0, "overflow": 1.02}


def test_a_commit_is_replayed_in_place_and_only_audio_after_it_stays_uncommitted() -> None:
    buf, _ = make(seconds=10.0)
    buf.speech(True)  # manual turns: always in progress until their commit
    buf.begin()
    for i in range(3):
        buf.hold(frame(i))
    buf.hold_commit()
    buf.hold(frame(3))
    assert replay(buf) == [frame(0), frame(1), frame(2), COMMIT, frame(3)]
    # Dropped again at once: only the audio after the replayed commit is owed to the next one.
    buf.begin()
    assert replay(buf) == [frame(3)]


def test_audio_arriving_during_the_replay_follows_in_order() -> None:
    buf, _ = make(seconds=10.0)
    buf.begin()
    buf.hold(frame(0))
    buf.hold(frame(1))
    sent = [buf.next_held()]
    buf.hold(frame(2))  # the client keeps talking while the replay is under way
    while (item := buf.next_held()) is not None:
        sent.append(item)
    buf.finish()
    assert sent == [frame(0), frame(1), frame(2)]
    assert not buf.holding


def test_a_failed_reconnect_discards_what_was_held_and_says_how_much() -> None:
    buf, reports = make(seconds=10.0)
    buf.begin()
    for i in range(25):
        buf.hold(frame(i))
    buf.discard()
    assert reports == {"buffered": 0.5, "discarded": 0.5}
    buf.begin()
    assert replay(buf) == []


def test_no_buffer_keeps_nothing() -> None:
    buf, reports = make(seconds=0.0)
    buf.sent(frame(0))
    buf.begin()
    assert buf.hold(frame(1)) is True  # dropped, and said so once
    assert buf.hold(frame(2)) is False
    assert replay(buf) == []
    assert reports == {"buffered": 0.04, "overflow": 0.04}


def test_a_replay_cut_short_by_another_drop_is_replayed_whole_next_time() -> None:
    buf, _ = make(seconds=10.0)
    buf.speech(True)
    buf.begin()
    for i in range(4):
        buf.hold(frame(i))
    assert buf.next_held() == frame(0)  # then the new upstream dies mid-replay
    buf.finish()
    buf.begin()
    assert replay(buf) == [frame(i) for i in range(4)]
