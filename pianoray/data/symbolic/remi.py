"""REMI tokens for performance MIDI, through miditok 3's ``REMI``.

Performance MIDI has no trustworthy beat grid, so time is mapped to beats at a FIXED tempo
(``RemiConfig.tempo_qpm``, 120 qpm: one beat = 0.5 s, one bar of 4/4 = 2 s). Bars and positions are
therefore clock time, not musical bars, and the Tempo token is the same in every sequence (it is kept
so the vocabulary matches the seed's REMI). miditok's REMI has no time-shift or half-pedal tokens and
quantises onsets to its positions per beat: with 24 positions per beat at 120 qpm the onset grid is
1/48 s = 20.8 ms, so a decoded onset lies within 10.4 ms of the original; that keeps chord spread and
rubato (tens of ms) while the vocabulary stays ~450 tokens. Durations up to 4 beats (2 s) use the
same 20.8 ms grid, 4-12 beats a 1/4-beat grid; longer notes are clipped to 12 beats (6 s), and the
sustain pedal (Pedal / PedalOff tokens) carries the rest of the sound. Velocity: 32 bins. Pitches
outside ``pitch_range`` (the 88 piano keys by default) are dropped by miditok.

The NoteTable <-> symusic Score conversion happens in memory (no temporary MIDI files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pianoray.data.midi import NoteTable, score_notes
from pianoray.errors import InputError
from pianoray.files import atomic_write


class RemiConfig(BaseModel):
    """REMI tokenizer settings (saved with every symbolic cache)."""

    model_config = ConfigDict(extra="forbid")
    tempo_qpm: float = Field(120.0, gt=0, description="fixed tempo used to map seconds to beats")
    positions_per_beat: int = Field(24, ge=1, description="onset/duration grid for the first 4 beats")
    long_positions_per_beat: int = Field(4, ge=1, description="duration grid for 4-12 beats")
    num_velocities: int = Field(32, ge=1)
    num_tempos: int = Field(32, ge=1)
    pitch_range: tuple[int, int] = (21, 109)  # [low, high): the 88 piano keys


class RemiTokenizer:
    """miditok REMI configured for performance MIDI; see the module docstring for the time grid.

    ``encode(notes) -> ids [L] int64``; ``decode(ids) -> NoteTable``. Token 0 is PAD.
    """

    # One tick per onset position: miditok resamples to max(beat_res) ticks per beat anyway.
    def __init__(self, config: RemiConfig | None = None) -> None:
        from miditok import REMI, TokenizerConfig  # local: miditok is slow to import

        self.config = config or RemiConfig()
        c = self.config
        if c.positions_per_beat % c.long_positions_per_beat:
            raise ValueError(
                "RemiConfig.long_positions_per_beat must divide positions_per_beat "
                f"({c.long_positions_per_beat} vs {c.positions_per_beat})"
            )
        self._miditok = REMI(
            TokenizerConfig(
                pitch_range=tuple(c.pitch_range),
                beat_res={(0, 4): c.positions_per_beat, (4, 12): c.long_positions_per_beat},
                num_velocities=c.num_velocities,
                special_tokens=["PAD", "BOS", "EOS", "MASK"],
                encode_ids_split="no",
                use_velocities=True,
                use_tempos=True,
                num_tempos=c.num_tempos,
                tempo_range=(40, 250),
                use_time_signatures=False,  # every bar is 4/4 clock time
                use_sustain_pedals=True,
                sustain_pedal_duration=False,  # Pedal ... PedalOff tokens
                use_programs=False,
            )
        )
        self.ticks_per_beat = c.positions_per_beat
        self._ticks_per_second = c.positions_per_beat * c.tempo_qpm / 60.0

    @property
    def vocab_size(self) -> int:
        return len(self._miditok)

    @property
    def pad_id(self) -> int:
        return int(self._miditok.pad_token_id)

    @property
    def onset_step_s(self) -> float:
        """The onset grid in seconds (decoded onsets lie within half of it of the original)."""
        return 1.0 / self._ticks_per_second

    def vocab(self) -> dict[str, int]:
        return dict(self._miditok.vocab)

    def token_table(self) -> "TokenTable":
        """What each id means numerically: its kind, a normalised value and (Position) its beat in the bar."""
        return token_table(self.vocab(), self.config)

    def to_score(self, notes: NoteTable):
        """NoteTable -> one-track symusic Score in ticks at the fixed tempo (in memory)."""
        import symusic

        tps = self._ticks_per_second
        score = symusic.Score(self.ticks_per_beat)
        score.tempos.append(symusic.Tempo(0, self.config.tempo_qpm))
        track = symusic.Track(program=0, is_drum=False)
        onset = np.round(notes.onset * tps).astype(np.int32)
        offset = np.round(notes.offset * tps).astype(np.int32)
        track.notes = symusic.core.NoteTickList.from_numpy(
            onset,
            np.maximum(offset - onset, 1).astype(np.int32),  # a note shorter than one tick keeps one tick
            notes.pitch.astype(np.int8),
            notes.velocity.astype(np.int8),
        )
        if len(notes.pedal_intervals):
            down = np.round(notes.pedal_intervals[:, 0] * tps).astype(np.int32)
            up = np.round(notes.pedal_intervals[:, 1] * tps).astype(np.int32)
            track.pedals = symusic.core.PedalTickList.from_numpy(down, np.maximum(up - down, 1).astype(np.int32))
        score.tracks.append(track)
        return score

    def encode(self, notes: NoteTable) -> np.ndarray:
        """Token ids [L] int64 for the whole table (Bar/Position/Tempo/Pedal/Pitch/Velocity/Duration)."""
        seqs = self._miditok.encode(self.to_score(notes))
        seq = seqs[0] if isinstance(seqs, list) else seqs
        return np.asarray(seq.ids, dtype=np.int64)

    def decode(self, ids: np.ndarray | list[int]) -> NoteTable:
        """Token ids -> NoteTable in seconds at the fixed tempo (the Tempo token is not re-read)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) != self.pad_id]
        score = self._miditok.decode([ids])
        tps = score.ticks_per_quarter * self.config.tempo_qpm / 60.0
        pitch, onset, dur, vel, pedals = score_notes(score, include_drums=True)  # miditok's tracks as decoded
        on = onset.astype(np.float64) / tps
        return NoteTable.from_arrays(
            pitch, on, on + np.maximum(dur, 1) / tps, vel, pedals / tps if pedals is not None else None
        )

    def save(self, path: str | Path) -> None:
        """Write the config and vocabulary as JSON (atomically)."""
        payload = {"format": "pianoray-remi", "config": self.config.model_dump(mode="json"), "vocab": self.vocab()}
        atomic_write(path, json.dumps(payload, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> "RemiTokenizer":
        """Rebuild from ``save``'s file; raises ValueError naming the file if the vocabulary differs
        (e.g. saved by another miditok version), since the cached ids would then mean other tokens."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            config = RemiConfig.model_validate(payload["config"])
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path}: not a pianoray REMI tokenizer file ({e})") from None
        tok = cls(config)
        if payload.get("vocab") != tok.vocab():
            raise InputError(f"{path}: saved vocabulary differs from this miditok's REMI vocabulary")
        return tok


# Token kinds of the REMI vocabulary (TokenTable.kind); MASK_KIND is for the MLM [MASK] id beyond the vocab.
TOKEN_KINDS = ("special", "bar", "position", "pitch", "velocity", "duration", "tempo", "pedal", "pedal_off")
MASK_KIND = len(TOKEN_KINDS)
BEATS_PER_BAR = 4  # REMI bars here are 4/4 clock time (no time-signature tokens)


class TokenTable(BaseModel):
    """Per-id numeric meaning of a REMI vocabulary, for encoders that should see token values as numbers
    (velocity 96 is near 100, position 13 comes after 12) instead of learning it from ids.

    kind: [V] index into TOKEN_KINDS; value: [V] in [0, 1] (pitch over the piano range, velocity / 127,
    log duration, position in the bar, tempo; 0 for kinds without a value); beats: [V] a Position token's
    beat offset within its bar (0 elsewhere); seconds_per_beat: the fixed clock (60 / tempo_qpm).
    """

    kind: list[int]
    value: list[float]
    beats: list[float]
    seconds_per_beat: float


def token_table(vocab: dict[str, int], config: RemiConfig) -> TokenTable:
    """Parse miditok's token strings (``Pitch_61``, ``Velocity_55``, ``Duration_0.18.24`` = beats.ticks.res,
    ``Position_5``, ``Tempo_121.29``, ``Bar_None``, ``Pedal_0``, ``PedalOff_0``, specials) into a TokenTable."""
    V = max(vocab.values()) + 1
    kind, value, beats = [0] * V, [0.0] * V, [0.0] * V
    ppb = config.positions_per_beat
    lo, hi = config.pitch_range
    max_ticks = 12 * ppb  # the longest duration token
    for name, i in vocab.items():
        typ, _, arg = name.partition("_")
        if typ == "Bar":
            kind[i] = 1
        elif typ == "Position":
            kind[i], beats[i] = 2, int(arg) / ppb
            value[i] = beats[i] / BEATS_PER_BAR
        elif typ == "Pitch":
            kind[i], value[i] = 3, (int(arg) - lo) / max(hi - 1 - lo, 1)
        elif typ == "Velocity":
            kind[i], value[i] = 4, int(arg) / 127.0
        elif typ == "Duration":
            b, t, res = (int(x) for x in arg.split("."))
            ticks = b * ppb + t * ppb / res
            kind[i], value[i] = 5, float(np.log1p(ticks) / np.log1p(max_ticks))
        elif typ == "Tempo":
            kind[i], value[i] = 6, (float(arg) - 40.0) / 210.0
        elif typ == "Pedal":
            kind[i] = 7
        elif typ == "PedalOff":
            kind[i] = 8
        elif name.endswith("_None") or typ == "PitchDrum":
            kind[i] = 0  # PAD, BOS, EOS, MASK; drum pitches (never produced: no drum tracks)
        else:
            raise ValueError(f"REMI token table: unknown token {name!r} (id {i}); a miditok version change?")
    return TokenTable(kind=kind, value=value, beats=beats, seconds_per_beat=60.0 / config.tempo_qpm)
