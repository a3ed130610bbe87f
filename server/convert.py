"""Between the wire and the library: request configs to decoder and session settings, results to messages.

Everything here is pure (no gRPC calls); a bad request raises `BadRequest`, which the servicer turns into
INVALID_ARGUMENT with its message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from google.protobuf.duration_pb2 import Duration

from asr.audio import Encoding
from asr.streaming import Result, StreamingConfig
from asr.text import normalize
from server.gen.asr.v1 import asr_pb2 as pb

ENCODINGS = {  # wire encoding -> asr.audio encoding
    pb.RecognitionConfig.ENCODING_UNSPECIFIED: Encoding.AUTO,
    pb.RecognitionConfig.LINEAR16: Encoding.LINEAR16,
    pb.RecognitionConfig.FLAC: Encoding.FLAC,
    pb.RecognitionConfig.MULAW: Encoding.MULAW,
    pb.RecognitionConfig.OGG: Encoding.OGG,
    pb.RecognitionConfig.WAV: Encoding.WAV,
}
LANGUAGES = ("", "en", "en-us")  # what the model recognises (compared in lower case)
MAX_BOOST = 20.0  # largest per-letter hotword bonus a request may ask for
MAX_PHRASES = 1000  # most hotword phrases in one request
MAX_PHRASE_CHARS = 100  # longest hotword phrase


class BadRequest(ValueError):
    """A request the server cannot honour, with the reason in the message (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class ServerSettings:
    """What the server decides for every call; requests choose within these."""

    stream: StreamingConfig  # chunking, endpointing and decoder of every session
    hotword_boost: float = 1.0  # per-letter bonus of a speech context that gives no boost
    max_alternatives: int = 5  # cap on a request's max_alternatives


@dataclass(frozen=True)
class CallOptions:
    """A request's audio format and output options, checked."""

    encoding: Encoding
    sample_rate: int | None
    channels: int
    max_alternatives: int
    word_times: bool
    word_confidence: bool


def call_options(config: pb.RecognitionConfig, settings: ServerSettings) -> CallOptions:
    name = pb.RecognitionConfig.AudioEncoding.Name
    if config.encoding not in ENCODINGS:
        raise BadRequest(
            f"unknown encoding {config.encoding}: expected one of {', '.join(map(name, ENCODINGS))}"
        )
    encoding = ENCODINGS[config.encoding]
    if config.sample_rate_hertz < 0:
        raise BadRequest(f"sample_rate_hertz must not be negative, got {config.sample_rate_hertz}")
    if config.audio_channel_count < 0:
        raise BadRequest(f"audio_channel_count must not be negative, got {config.audio_channel_count}")
    if config.max_alternatives < 0:
        raise BadRequest(f"max_alternatives must not be negative, got {config.max_alternatives}")
    if config.language_code.lower() not in LANGUAGES:
        raise BadRequest(
            f"language_code {config.language_code!r} is not supported: the model recognises en-US"
        )
    return CallOptions(
        encoding=encoding,
        sample_rate=config.sample_rate_hertz or None,
        channels=config.audio_channel_count or 1,
        max_alternatives=min(max(config.max_alternatives, 1), settings.max_alternatives),
        word_times=config.enable_word_time_offsets,
        word_confidence=config.enable_word_confidence,
    )


def hotwords(contexts: Sequence[pb.SpeechContext], default_boost: float) -> tuple[tuple[str, float], ...]:
    """speech_contexts -> ((normalised phrase, per-letter boost), ...); phrases that normalise to nothing
    are dropped."""
    out: list[tuple[str, float]] = []
    for i, ctx in enumerate(contexts):
        if not 0 <= ctx.boost <= MAX_BOOST:
            raise BadRequest(
                f"speech_contexts[{i}].boost must be between 0 and {MAX_BOOST:g}, got {ctx.boost:g}"
            )
        boost = ctx.boost or default_boost
        for phrase in ctx.phrases:
            if len(phrase) > MAX_PHRASE_CHARS:
                raise BadRequest(f"speech_contexts[{i}]: phrase longer than {MAX_PHRASE_CHARS} characters")
            text = normalize(phrase)
            if text:
                out.append((text, boost))
    if len(out) > MAX_PHRASES:
        raise BadRequest(f"speech_contexts hold {len(out)} phrases, more than the {MAX_PHRASES} allowed")
    return tuple(out)


def session_config(
    config: pb.RecognitionConfig,
    settings: ServerSettings,
    interim_results: bool = False,
    single_utterance: bool = False,
) -> tuple[CallOptions, StreamingConfig]:
    """A request's RecognitionConfig -> its checked options and the StreamingConfig of its session."""
    options = call_options(config, settings)
    base = settings.stream
    stream = replace(
        base,
        interim_results=interim_results,
        single_utterance=single_utterance,
        max_alternatives=options.max_alternatives,
        hotwords=hotwords(config.speech_contexts, settings.hotword_boost),
    )
    return options, stream


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return d


def alternatives(result: Result, options: CallOptions) -> list[pb.SpeechRecognitionAlternative]:
    """The result's best transcript (with words when asked for) and its other alternatives, best first."""
    best = pb.SpeechRecognitionAlternative(transcript=result.text, confidence=result.confidence)
    if options.word_times or options.word_confidence:
        for w in result.words:
            info = best.words.add(word=w.word)
            if options.word_times:
                info.start_time.CopyFrom(duration(w.start_s))
                info.end_time.CopyFrom(duration(w.end_s))
            if options.word_confidence:
                info.confidence = w.confidence
    out = [best]
    seen = {result.text}
    for text, confidence in result.alternatives or ():
        if len(out) >= options.max_alternatives:
            break
        if text not in seen:
            seen.add(text)
            out.append(pb.SpeechRecognitionAlternative(transcript=text, confidence=confidence))
    return out


def streaming_result(result: Result, options: CallOptions) -> pb.StreamingRecognitionResult:
    msg = pb.StreamingRecognitionResult(
        alternatives=alternatives(result, options),
        is_final=result.is_final,
        stability=0.0 if result.is_final else result.stability,
    )
    msg.result_end_time.CopyFrom(duration(result.end_s))
    msg.result_start_time.CopyFrom(duration(result.start_s))
    return msg


def recognition_result(result: Result, options: CallOptions) -> pb.SpeechRecognitionResult:
    msg = pb.SpeechRecognitionResult(alternatives=alternatives(result, options))
    msg.result_end_time.CopyFrom(duration(result.end_s))
    msg.result_start_time.CopyFrom(duration(result.start_s))
    return msg
