"""The turn arbiter's settings and words: what `start.turnDetection` and `VOXGATE_TURN_*` mean."""

from __future__ import annotations

import pytest

from voxgate import protocol as P
from voxgate.config import Settings
from voxgate.gateway.neutral.arbiter import TurnPolicy, words
from voxgate.protocol import ProtocolError


def _settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[arg-type]


def test_defaults_keep_the_engine_in_charge() -> None:
    policy = TurnPolicy.from_settings(_settings(), None)
    assert not policy.gateway_interrupts and not policy.gateway_responds
    assert policy.max_utterance_ms == 0
    assert policy.to_wire(True)["interruption"] == "engine"


def test_session_settings_win_over_the_operators() -> None:
    settings = _settings(turn_interrupt_min_ms=300, turn_max_utterance_ms=20000,
                         turn_backchannels="yeah,right")  # fmt: skip
    td = P.TurnDetection.model_validate({"interruptMinWords": 2, "maxUtteranceMs": 0})
    policy = TurnPolicy.from_settings(settings, td)
    assert policy.interrupt_min_ms == 300  # the operator's, not overridden
    assert policy.interrupt_min_words == 2
    assert policy.max_utterance_ms == 0  # the session turned the limit off
    assert policy.backchannels == ("yeah", "right")
    assert policy.gateway_interrupts and policy.gateway_responds


@pytest.mark.parametrize(
    ("text", "meaningful"),
    [("Mm-hmm.", 0), ("mm hmm", 0), ("Yeah, right!", 0), ("OK", 0), ("Yeah but wait", 2),
     ("Stop.", 1), ("", 0), ("uh-huh", 0), ("I don't think so", 4)],
)  # fmt: skip
def test_backchannels_do_not_count_as_words(text: str, meaningful: int) -> None:
    assert TurnPolicy().meaningful_words(text) == meaningful


def test_words_split_on_hyphens_and_punctuation() -> None:
    assert words("Mm-hmm. Don't!") == ["mm", "hmm", "don't"]


def test_an_engine_without_turn_control_keeps_only_the_utterance_limit() -> None:
    policy = TurnPolicy(min_silence_ms=800, max_utterance_ms=9000, interrupt_min_ms=250)
    kept, dropped = policy.without_turn_control()
    assert dropped == ["minSilenceMs", "interruptMinMs"]
    assert kept.max_utterance_ms == 9000 and not kept.gateway_responds


def test_new_messages_refuse_unknown_fields_by_name() -> None:
    assert isinstance(P.parse_client_text('{"type":"hold"}'), P.HoldMessage)
    allow = P.parse_client_text('{"type":"allow_next","respond":true}')
    assert isinstance(allow, P.AllowNextMessage) and allow.respond is True
    barge = P.parse_client_text('{"type":"barge_in","playedMs":120}')
    assert isinstance(barge, P.BargeInMessage) and barge.played_ms == 120
    with pytest.raises(ProtocolError) as caught:
        P.parse_client_text('{"type":"allow_next","respnd":true}')
    assert caught.value.message == "allow_next: unknown field 'respnd'; the message was ignored"
    assert caught.value.code == P.ErrorCode.BAD_REQUEST and not caught.value.fatal


def test_turn_detection_names_unknown_fields_and_bounds_the_new_ones() -> None:
    td = P.TurnDetection.model_validate({"mode": "server_vad", "maxUtterancesMs": 5})
    assert td.unknown_fields() == ["maxUtterancesMs"]
    for bad in ({"maxUtteranceMs": 500}, {"interruptMinMs": -1}, {"backchannels": ["x" * 41]},
                {"falseInterruptionMs": 50}):  # fmt: skip
        with pytest.raises(ProtocolError):
            P.parse_client_text(P.encode({"type": "start", "turnDetection": bad}))
