"""The built-in demo corpus: a small synthetic world written in the cache format, deterministic from a seed.

Synthetic pieces (score MIDI) are played by synthetic performers whose latent skills shape the
performance MIDI; frame embeddings are computed from each performance (frame-rate note activity through
a fixed random nonlinear projection, plus per-recording nuisance), so the audio and symbolic views carry
the same signal. 19 labels (PercePiano order) are a known noisy function of each performance's measured
properties (``LABEL_WEIGHTS``). Some signal is planted so encoders differ (docs/data-format.md, "Demo"):

- timing (onset jitter of sd 8-53 ms, mostly above the 20.8 ms REMI grid), pedal blur (the pedal held into the
  next harmony), note lengths and velocity spread drive timing, pedal, articulation and dynamics labels, and
  every symbolic view can measure them within a passage;
- timbre (performer tone and brightness) exists only in the frames, never in the MIDI;
- the dynamic arc (crescendo vs. diminuendo against the passage's intended shape) is temporal order:
  a mean pool of frames cannot see it.

Beside the corpus, in ``planted/`` (:data:`PLANTED_DIR`), a separate set for Round 3's score-conditioned figure
(:func:`write_planted`): for every T1 passage, pairs of performances of its score by one player, one with wrong
notes (pitch errors and missing notes, otherwise played as written) and one with every note right but expressive
timing and dynamics, each with its frames. It draws from its own random stream, after the corpus is written, so
the corpus (its files, tiers and every figure from it) is byte for byte what it was without it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pianoray.data.cache import CORPUS_FILE, FRAME_RATE, CacheError, CacheWriter
from pianoray.data.midi import NoteTable
from pianoray.errors import InputError
from pianoray.files import atomic_write, read_json

DEMO_TOOL = "pianoray.demo"
DEMO_VERSION = 2  # 2: symbolic-visible timing, pedal blur and articulation; denser passages; less label noise
WIDTH = 128
WINDOW_FRAMES = 16
MAX_FRAMES = 64
N_FRAME_FEATURES = 10

# Measured properties of a performance that the labels depend on (z-scored over the T1 performances).
PROPERTIES = (
    "jitter", "rubato", "tempo", "vel_mean", "vel_range", "vel_noise", "arc", "legato", "pedal", "blur",
    "tone", "bright", "register", "density", "skill",
)
# label dimension (PercePiano order) -> {property: weight}. Signs follow each scale's poles (1 = second pole).
LABEL_WEIGHTS: tuple[dict[str, float], ...] = (
    {"jitter": 1.0, "rubato": 0.3},  # Timing stable -> unstable
    {"legato": 1.0},  # Articulation short -> long
    {"vel_mean": 0.6, "bright": 0.5, "legato": -0.3},  # Articulation soft -> hard
    {"pedal": 1.0},  # Pedal sparse -> saturated
    {"blur": 1.0, "pedal": 0.3},  # Pedal clean -> blurred
    {"tone": 0.8, "vel_range": 0.4},  # Timbre even -> colorful
    {"tone": 1.0, "pedal": 0.3},  # Timbre shallow -> rich
    {"bright": -0.9, "register": -0.4},  # Timbre bright -> dark
    {"vel_mean": 1.0},  # Timbre soft -> loud
    {"vel_noise": 0.8, "vel_mean": 0.4, "tone": -0.3},  # Dynamic mellow -> crude
    {"vel_range": 1.0, "arc": 0.3},  # Dynamic range little -> large
    {"tempo": -1.0, "rubato": 0.3},  # Fast -> slow paced
    {"rubato": 0.6, "pedal": 0.4, "arc": 0.3},  # Flat -> spacious
    {"arc": 1.0, "jitter": -0.4},  # Disproportioned -> balanced
    {"vel_range": 0.6, "rubato": 0.5, "arc": 0.3},  # Pure -> dramatic
    {"register": -0.7, "bright": -0.4},  # Optimistic -> dark
    {"vel_mean": 0.6, "tempo": 0.5, "density": 0.4},  # Low -> high energy
    {"rubato": 0.6, "tone": 0.5, "arc": 0.3},  # Honest -> imaginative
    {"skill": 0.6, "arc": 0.5, "jitter": -0.5, "blur": -0.3, "tone": 0.3},  # Unconvincing -> convincing
)
PASSAGE_EFFECT_SD = 0.35  # raters' per-passage offset (in z units): with the passage-driven properties,
# passage identity explains ~40% of label variance, as in PercePiano.
LABEL_NOISE_SD = 0.35
MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
PLANTED_DIR = "planted"  # the planted score-conditioned pairs: a corpus of their own inside the demo's folder
PLANTED_PAIRS_FILE = "pairs.json"  # [{"passage", "expressive": segment id, "wrong": segment id}, ...]
PLANTED_PER_PASSAGE = 2  # pairs per T1 passage, each by another player (tone and brightness)
PLANTED_PITCH_ERRORS = 0.15  # share of a wrong-notes take's notes played a semitone or a tone off
PLANTED_MISSING = 0.10  # share of its notes left out
# A planted player's musicality: 1 shapes the phrase (ritardando, dynamics along the arc, beyond the score's);
# LITERAL plays the score's own dynamics (follow = 0.375 cancels the arc term of ``_perform``), with less rubato.
PLANTED_EXPRESSIVE = 1.0
PLANTED_LITERAL = 0.484375


@dataclass
class Piece:
    name: str
    tempo: float  # beats per second
    density: int  # onsets per beat
    polyphony: int  # max notes per onset
    register: float  # centre pitch
    key: int

    @property
    def grade(self) -> int:
        """Difficulty 0-10: a fixed function of speed, density, polyphony and register spread."""
        x = 1.1 * (self.tempo * self.density - 4.7) / 2.5 + 0.8 * (self.polyphony - 2) + 0.2 * abs(self.register - 62) / 6
        return int(np.clip(round(5 + 2.2 * x), 0, 10))


@dataclass
class Passage:
    key: str
    piece: Piece
    notes: NoteTable  # the deadpan score rendering
    arc: np.ndarray  # [n] intended dynamic contour per note, in [-1, 1]
    level: float  # nominal velocity
    legato: bool
    pedal: bool
    changes: np.ndarray  # harmony change times (s, at nominal tempo)


@dataclass
class Performer:
    name: str
    timing: float
    dynamics: float
    articulation: float
    pedalling: float
    musicality: float
    tone: float  # audio-only: timbre richness
    bright: float  # audio-only: brightness
    energy: float  # style: tempo and loudness preference
    legato_style: float
    pedal_style: float

    @property
    def skill(self) -> float:
        return float(np.mean([self.timing, self.dynamics, self.articulation, self.pedalling, self.musicality, self.tone]))


def _sig(x: float | np.ndarray) -> float | np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _make_performer(name: str, rng: np.random.Generator) -> Performer:
    z = rng.normal(size=10)
    general = rng.normal()  # skills correlate: good pianists tend to be good at everything
    return Performer(name, *(float(_sig(0.8 * general + 0.9 * v)) for v in z[:6]), *(float(_sig(v)) for v in z[6:]))


def _make_piece(name: str, rng: np.random.Generator) -> Piece:
    return Piece(
        name=name,
        tempo=float(rng.uniform(1.2, 2.4)),
        density=int(rng.choice([2, 2, 3, 3, 4])),
        polyphony=int(rng.integers(1, 4)),
        register=float(rng.uniform(50, 74)),
        key=int(rng.integers(0, 12)),
    )


def _make_passage(key: str, piece: Piece, rng: np.random.Generator, seconds: float = 2.0) -> Passage:
    n_beats = max(2, int(round(seconds * piece.tempo)))
    step = 1.0 / piece.density
    grid = np.arange(0, n_beats, step)
    grid = grid[rng.random(len(grid)) > 0.12]  # a few rests
    if len(grid) == 0:
        grid = np.array([0.0])
    scale = (MAJOR + piece.key) % 12
    degree = int(rng.integers(0, 7))
    pitch, onset, dur, arc_pos = [], [], [], []
    shape = rng.choice([-1.0, 1.0]) * (0.5 + 0.5 * rng.random())  # hairpin up (or down) and back
    for t in grid:
        degree += int(rng.choice([-2, -1, 1, 1, 2]))
        base = piece.register + (degree % 14 - 7)
        chord = [base] + [base - 12 + 4 * j for j in range(int(rng.integers(0, piece.polyphony)))]
        for p in chord:
            octave = int(round((p - scale[0]) / 12))
            pc = scale[np.argmin(np.abs((p % 12) - scale))]
            pitch.append(int(np.clip(12 * octave + pc, 21, 108)))
            onset.append(t / piece.tempo)
            dur.append(step / piece.tempo)
            arc_pos.append(t / n_beats)
    onset_a = np.asarray(onset)
    arc = shape * np.sin(np.pi * np.asarray(arc_pos))  # [n], the intended dynamic shape
    level = float(rng.uniform(45, 95))
    legato = bool(rng.random() < 0.5)
    pedal = bool(rng.random() < 0.5)
    changes = np.arange(0, n_beats, 2 if piece.tempo > 1.8 else 1) / piece.tempo
    vel = np.clip(level + 12 * arc, 1, 127)
    off = onset_a + np.asarray(dur) * (1.0 if legato else 0.6)
    intervals = np.stack([changes + 0.02, np.append(changes[1:], onset_a.max() + step / piece.tempo) - 0.02], 1) if pedal else None
    notes = NoteTable.from_arrays(pitch, onset_a, off, vel, intervals)
    order = np.lexsort((np.asarray(pitch, dtype=np.int16), onset_a))
    return Passage(key, piece, notes, arc[order], level, legato, pedal, changes)


def _perform(passage: Passage, perf: Performer, rng: np.random.Generator, max_frames: int) -> tuple[NoteTable, dict[str, float], int]:
    """Play ``passage``: returns (performance notes, measured properties, n_frames)."""
    s = passage.notes
    n = len(s)
    tempo_ratio = float(np.exp(0.25 * (perf.energy - 0.5) + rng.normal(0, 0.04)))  # > 1: faster
    total = float(s.onset.max()) + 1e-6
    u = s.onset / total
    # Rubato: musical players shape the phrase (ritardando at its end); unsteady ones wobble.
    shaping = (0.03 + 0.10 * perf.musicality) * u**3
    wobble = (1 - perf.timing) * 0.08 * np.sin(2 * np.pi * (1.0 + rng.random()) * u + rng.uniform(0, 6.28))
    jitter_sd = 0.008 + 0.045 * (1 - perf.timing)  # 8-53 ms: unsteady players sit above the REMI grid (20.8 ms)
    jitter = rng.normal(0, jitter_sd, n)
    onset = s.onset / tempo_ratio + shaping + wobble + jitter
    onset = onset - min(0.0, onset.min()) + 0.05
    # Dynamics: follow the intended arc (skilled, musical) or not; level from the passage and the player.
    follow = 1.6 * perf.musicality - 0.4
    vel_noise = rng.normal(0, 2 + 14 * (1 - perf.dynamics), n)
    vel = s.velocity + (follow - 1) * 12 * passage.arc + (10 + 15 * perf.dynamics) * 0.3 * passage.arc \
        + 20 * (perf.energy - 0.5) + vel_noise
    vel = np.clip(np.round(vel), 1, 127)
    # Articulation: the score's marking, the player's habit, and (lack of) control.
    ioi_nom = np.maximum(s.offset - s.onset, 0.05) / (1.0 if passage.legato else 0.6)
    ratio = (0.95 if passage.legato else 0.55) + 0.5 * (perf.legato_style - 0.5) \
        + rng.normal(0, 0.04 + 0.2 * (1 - perf.articulation), n)
    dur = np.maximum(ioi_nom / tempo_ratio * np.clip(ratio, 0.15, 1.6), 0.03)
    # Pedal: used when marked or by habit; late releases (low pedalling skill) blur harmony changes.
    uses_pedal = passage.pedal or perf.pedal_style > 0.6
    changes = passage.changes / tempo_ratio + 0.05
    intervals = np.zeros((0, 2))
    blur = 0.0
    if uses_pedal and len(changes):
        ends = np.append(changes[1:], onset.max() + 0.3)
        late = rng.random(len(changes)) < (1 - perf.pedalling) * 0.9
        late[-1] = False  # no harmony change after the last press to blur
        downs = changes + 0.03 + 0.05 * rng.random(len(changes))
        # Clean: lift just before the next change. Late: hold 0.1-0.4 s into the next harmony, so its
        # first notes sound under the old pedal (they are pedalled at onset), then press again.
        ups = np.where(late, ends + 0.1 + 0.3 * rng.random(len(changes)), ends - 0.02)
        for i in range(1, len(downs)):
            downs[i] = max(downs[i], ups[i - 1] + 0.03)
        ok = ups > downs + 0.02
        intervals = np.stack([downs[ok], ups[ok]], 1)
        blur = float(late.mean())
    end = onset.max() + dur.max() + 0.3
    n_frames = int(min(max_frames, max(WINDOW_FRAMES, math.ceil(end * FRAME_RATE / WINDOW_FRAMES) * WINDOW_FRAMES)))
    window = n_frames / FRAME_RATE
    inside = onset < window - 0.05
    if inside.sum() < 2:
        inside[:2] = True
    offset = np.minimum(onset + dur, window - 0.01)
    offset = np.maximum(offset, onset + 0.01)
    intervals = intervals[intervals[:, 0] < window - 0.05] if len(intervals) else intervals
    if len(intervals):
        intervals[:, 1] = np.minimum(intervals[:, 1], window - 0.01)
    notes = NoteTable.from_arrays(s.pitch[inside], onset[inside], offset[inside], vel[inside], intervals)
    v = notes.velocity.astype(float)
    arc_in = passage.arc[inside]
    arc_corr = float(np.corrcoef(v, arc_in)[0, 1]) if v.std() > 0 and arc_in.std() > 0 else 0.0
    pedal_frac = float(np.clip((intervals[:, 1] - intervals[:, 0]).sum() / window, 0, 1)) if len(intervals) else 0.0
    props = {
        "jitter": float(np.std(jitter)),
        "rubato": float(np.std(np.diff(shaping + wobble))) if n > 1 else 0.0,
        "tempo": tempo_ratio,
        "vel_mean": float(v.mean()),
        "vel_range": float(np.percentile(v, 90) - np.percentile(v, 10)),
        "vel_noise": float(np.std(vel_noise)),
        "arc": arc_corr,
        "legato": float(np.mean(np.clip(ratio, 0.15, 1.6))),
        "pedal": pedal_frac,
        "blur": blur,
        "register": float(s.pitch.mean()),
        "density": float(passage.piece.density * passage.piece.tempo),
        "skill": perf.skill,
    }
    return notes, props, n_frames


class FrameProjection:
    """The fixed random nonlinear map from frame-rate note features [T, 10] to embeddings [T, 128]."""

    def __init__(self, rng: np.random.Generator, width: int = WIDTH, hidden: int = 96) -> None:
        self.w1 = rng.normal(0, 1.2 / math.sqrt(N_FRAME_FEATURES), (N_FRAME_FEATURES, hidden))
        self.b1 = rng.normal(0, 0.3, hidden)
        self.w2 = rng.normal(0, 1.0 / math.sqrt(hidden), (hidden, width))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ self.w1 + self.b1) @ self.w2


def frame_features(notes: NoteTable, n_frames: int, tone: float, bright: float) -> np.ndarray:
    """Performance -> [n_frames, 10] frame-rate features (25 Hz): onsets, loudness, polyphony, pitch,
    pedal, pedal resonance (pitch-class mixing under the pedal), and the timbre channels (tone, brightness)
    that only the audio carries."""
    t = (np.arange(n_frames) + 0.5) / FRAME_RATE  # [T]
    on = notes.onset[None, :]
    vel = notes.velocity[None, :] / 127.0
    ped = notes.pedal_intervals
    down = np.zeros(n_frames, dtype=bool)
    release = notes.offset.copy()
    for d, u in ped:
        down |= (t >= d) & (t < u)
        held = (notes.offset >= d) & (notes.offset < u)
        release[held] = np.maximum(release[held], u)  # the pedal sustains released keys
    tt = t[:, None]
    sounding = (tt >= on) & (tt < release[None, :])
    amp = np.where(sounding, vel * np.exp(-(tt - on) / 0.8), 0.0)  # [T, N]
    onset_hit = (tt - 0.5 / FRAME_RATE <= on) & (on < tt + 0.5 / FRAME_RATE)
    loud = amp.sum(1)
    pitch_mean = np.where(loud > 0, (amp * notes.pitch[None, :]).sum(1) / np.maximum(loud, 1e-6), 60.0)
    pcs = np.zeros((n_frames, 12))
    for k in range(12):
        pcs[:, k] = (sounding & ((notes.pitch % 12) == k)[None, :]).any(1)
    onset_strength = (onset_hit * vel).sum(1)
    x = np.stack(
        [
            onset_strength,
            onset_hit.sum(1) / 3.0,
            loud,
            sounding.sum(1) / 6.0,
            (pitch_mean - 60.0) / 24.0,
            down.astype(float),
            down * pcs.sum(1) / 6.0,
            loud * (tone - 0.5) * 3.0,
            loud * ((bright - 0.5) * 3.0 + 0.5 * vel.mean()),
            onset_strength * (vel.mean() ** 2) * 2.0,
        ],
        axis=1,
    )
    return x


def _augment(frames: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    x = frames.astype(np.float32)
    if "noise" in kind:
        x = x + rng.normal(0, 0.15, x.shape)
    if "gain" in kind:
        x = x * np.exp(rng.normal(0, 0.15, x.shape[1]))[None, :]
    if "smooth" in kind:
        pad = np.concatenate([x[:1], x, x[-1:]])
        x = (pad[:-2] + pad[1:-1] + pad[2:]) / 3.0
    return x


AUGMENTATIONS = ("noise", "gain", "smooth", "noise+gain")


def _planted_player(name: str, musicality: float, tone: float, bright: float) -> Performer:
    """A planted pair's player: steady (timing, dynamics, articulation and pedalling skill 1), neutral style."""
    return Performer(name, 1.0, 1.0, 1.0, 1.0, musicality, tone, bright, 0.5, 0.5, 0.5)


def _wrong_notes(notes: NoteTable, rng: np.random.Generator) -> NoteTable:
    """``notes`` with PLANTED_PITCH_ERRORS of them a semitone or a tone off and PLANTED_MISSING left out (at least
    one of each in a take of three notes or more; two notes always stay)."""
    n = len(notes)
    pitch = notes.pitch.astype(int).copy()
    wrong = rng.choice(n, size=max(1, int(round(PLANTED_PITCH_ERRORS * n))), replace=False)
    pitch[wrong] = np.clip(pitch[wrong] + rng.choice([-2, -1, 1, 2], size=len(wrong)), 21, 108)
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, size=min(n - 2, max(1, int(round(PLANTED_MISSING * n)))), replace=False)] = False
    return NoteTable.from_arrays(pitch[keep], notes.onset[keep], notes.offset[keep], notes.velocity[keep],
                                 notes.pedal_intervals)


def write_planted(out_dir: str | Path, passages: list[Passage], projection: FrameProjection, seed: int,
                  max_frames: int = MAX_FRAMES, width: int = WIDTH) -> Path:
    """Write the planted score-conditioned pairs of ``passages`` to ``out_dir/planted`` and return that folder.

    A corpus in the cache format (tier T1, unlabelled; each passage's score MIDI beside the performances) and
    ``pairs.json`` naming each pair's two segments. Per passage, PLANTED_PER_PASSAGE players each play it twice
    from one random state: once expressively (musicality PLANTED_EXPRESSIVE) with every note right, once
    literally (PLANTED_LITERAL: the score's dynamics, less rubato) with wrong notes (:func:`_wrong_notes`). The two
    share the recording's nuisance (room, microphone), so their frames differ by what was played alone. Its own
    random stream (seed, 4099): the corpus never sees it.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4099]))
    root = Path(out_dir) / PLANTED_DIR
    writer = CacheWriter(root, width=width, window_frames=WINDOW_FRAMES, name=f"demo-planted-seed{seed}",
                         created_by={"tool": DEMO_TOOL, "version": DEMO_VERSION, "seed": seed, "set": "planted"},
                         overwrite=True)
    pairs = []
    for passage in passages:
        score_rel, score_sha = writer.write_midi(passage.notes, f"midi/score/{passage.key}.mid")
        for j in range(PLANTED_PER_PASSAGE):
            tone, bright = (float(v) for v in rng.uniform(0.2, 0.8, 2))
            nuisance = rng.normal(0, 0.25, width)
            take_seed = int(rng.integers(2**63))
            ids = {}
            for kind, musicality in (("expressive", PLANTED_EXPRESSIVE), ("wrong", PLANTED_LITERAL)):
                play = np.random.default_rng(take_seed)  # both takes from one state: the same jitter and noise
                player = _planted_player(f"planted{j}", musicality, tone, bright)
                notes, _, n_frames = _perform(passage, player, play, max_frames)
                if kind == "wrong":
                    notes = _wrong_notes(notes, play)
                frames = projection(frame_features(notes, n_frames, tone, bright)) + nuisance[None, :] \
                    + play.normal(0, 0.05, (n_frames, width))
                sid = ids[kind] = f"{passage.key}_planted{j}_{kind}"
                perf_rel, perf_sha = writer.write_midi(notes, f"midi/perf/{sid}.mid")
                writer.add("T1", {"segment_id": sid, "piece": passage.piece.name, "passage": passage.key,
                                  "performer": player.name, "perf_midi": perf_rel, "perf_midi_sha": perf_sha,
                                  "score_midi": score_rel, "score_midi_sha": score_sha}, frames.astype(np.float32))
            pairs.append({"passage": passage.key, **ids})
    atomic_write(root / PLANTED_PAIRS_FILE, json.dumps(pairs, indent=1))
    return writer.close()


@dataclass(frozen=True)
class PlantedPairs:
    """The planted set of a demo folder: its corpus (T1, unlabelled) and its pairs, each
    ``{"passage", "expressive": segment id, "wrong": segment id}``."""

    corpus: Any  # pianoray.data.corpus.Corpus
    pairs: list[dict[str, str]]

    def of_passages(self, passages: Iterable[str]) -> list[dict[str, str]]:
        """The pairs of ``passages`` (a fold's test passages), in the set's order."""
        keep = set(passages)
        return [p for p in self.pairs if p["passage"] in keep]


def open_planted(root: str | Path) -> PlantedPairs | None:
    """The planted pairs beside the corpus at ``root`` (``root/planted``), or None when it has none (any corpus
    but the demo)."""
    from pianoray.data.corpus import open_cache

    folder = Path(root) / PLANTED_DIR
    if not (folder / CORPUS_FILE).is_file():
        return None
    pairs = read_json(folder / PLANTED_PAIRS_FILE, "planted pairs")
    if not isinstance(pairs, list) or not all(isinstance(p, dict) and {"passage", "expressive", "wrong"} <= set(p)
                                              for p in pairs):
        raise InputError(f"{folder / PLANTED_PAIRS_FILE}: expected a list of {{passage, expressive, wrong}} objects")
    return PlantedPairs(open_cache(folder), pairs)


def ensure_demo(out_dir: str | Path, seed: int = 0, scale: float = 1.0) -> str | None:
    """Make ``out_dir`` hold a current demo corpus; returns what was done, or None when nothing was.

    - no corpus.json: generate the demo for (seed, scale);
    - a demo written by another ``DEMO_VERSION``: regenerate it, with the seed and scale it records
      (so a cached demo follows the generator, and a demo someone made at another size stays that size);
    - a current demo (whatever its seed and scale), or a cache another tool wrote: leave it as it is.
    """
    path = Path(out_dir) / CORPUS_FILE
    if not path.is_file():
        generate_demo(out_dir, seed=seed, scale=scale)
        return f"generated (seed {seed}, scale {scale:g})"
    try:
        made = json.loads(path.read_text()).get("created_by") or {}
    except (OSError, ValueError, AttributeError):
        return None  # not ours to judge: opening the corpus reports what is wrong with it
    if made.get("tool") != DEMO_TOOL:
        return None
    if made.get("version") == DEMO_VERSION:
        if (Path(out_dir) / PLANTED_DIR / CORPUS_FILE).is_file():
            return None
        add_planted(out_dir, seed=int(made.get("seed", seed)), scale=float(made.get("scale", scale)))
        return "added the planted score-conditioned pairs (planted/); the corpus is unchanged"
    seed, scale = int(made.get("seed", seed)), float(made.get("scale", scale))
    generate_demo(out_dir, seed=seed, scale=scale)
    return f"regenerated: demo version {made.get('version')} is stale, now {DEMO_VERSION} (seed {seed}, scale {scale:g})"


def add_planted(out_dir: str | Path, seed: int, scale: float) -> Path:
    """Add the planted pairs to a current demo written without them (before they existed, or killed in between):
    the demo is generated again beside ``out_dir`` (the same bytes: it is deterministic) and only its
    ``planted/`` moves in, so the corpus's own files are never rewritten."""
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-planted-") as tmp:
        generate_demo(tmp, seed=seed, scale=scale)
        shutil.rmtree(out / PLANTED_DIR, ignore_errors=True)  # a half-written set (killed before corpus.json)
        os.replace(Path(tmp) / PLANTED_DIR, out / PLANTED_DIR)
    return out / PLANTED_DIR


def generate_demo(out_dir: str | Path, seed: int = 0, scale: float = 1.0, max_frames: int = MAX_FRAMES,
                  width: int = WIDTH) -> Path:
    """Write the demo corpus into ``out_dir`` (the cache format) and return it. Same seed -> same bytes.

    Scale 1: 8 pieces x 6 passages x 6-10 performers (~380 T1 segments), ~120 T2 segments in 12
    rounds, ~150 T3 segments, ~270 T4 pairs. ``scale`` multiplies the counts. Then the planted pairs
    (:func:`write_planted`, PLANTED_PER_PASSAGE per T1 passage) go into ``planted/``.
    Refuses to overwrite a folder holding a cache that this generator did not write.
    """
    out = Path(out_dir)
    if scale <= 0:
        raise InputError(f"scale must be > 0, got {scale}")
    if max_frames % WINDOW_FRAMES:
        raise InputError(f"max_frames={max_frames} must be a multiple of window_frames={WINDOW_FRAMES}")
    existing = out / CORPUS_FILE
    if existing.exists():
        made = read_json(existing, "corpus record")
        tool = (made.get("created_by") or {}).get("tool") if isinstance(made, dict) else None
        if tool != DEMO_TOOL:
            raise CacheError(f"{existing}: not a demo corpus (created by {tool!r}); refusing to overwrite it")
    from pianoray.data.percepiano import PERCEPIANO_DIMS

    rng = np.random.default_rng(np.random.SeedSequence([seed, 20261]))
    projection = FrameProjection(np.random.default_rng(np.random.SeedSequence([seed, 7])), width)

    def count(x: float) -> int:
        return max(1, int(round(x * scale)))

    performers = [_make_performer(f"perf{i:03d}", rng) for i in range(max(16, count(40)))]
    t1_pieces = [_make_piece(f"piece{i:02d}", rng) for i in range(count(8))]
    t2_pieces = [_make_piece(f"comp{i:02d}", rng) for i in range(count(2))]
    t3_pieces = [_make_piece(f"maestro{i:02d}", rng) for i in range(count(6))]

    writer = CacheWriter(
        out, width=width, window_frames=WINDOW_FRAMES, name=f"demo-seed{seed}-scale{scale:g}",
        created_by={"tool": DEMO_TOOL, "version": DEMO_VERSION, "seed": seed, "scale": scale},
        label_names=list(PERCEPIANO_DIMS), overwrite=True,
    )
    writer.difficulty = {p.name: p.grade for p in t1_pieces + t2_pieces + t3_pieces}
    score_files: dict[str, tuple[str, str]] = {}

    def passages_of(piece: Piece, k: int) -> list[Passage]:
        out_p = []
        for j in range(k):
            p = _make_passage(f"{piece.name}_p{j:02d}", piece, rng)
            score_files[p.key] = writer.write_midi(p.notes, f"midi/score/{p.key}.mid")
            out_p.append(p)
        return out_p

    def render(passage: Passage, perf: Performer, sid: str) -> tuple[dict, np.ndarray, dict]:
        notes, props, n_frames = _perform(passage, perf, rng, max_frames)
        tone = float(np.clip(perf.tone + rng.normal(0, 0.05), 0, 1))
        bright = float(np.clip(perf.bright + rng.normal(0, 0.05), 0, 1))
        props.update(tone=tone, bright=bright)
        x = frame_features(notes, n_frames, tone, bright)
        # Nuisance: a per-recording offset (room, microphone) and frame noise, the same size for all.
        frames = projection(x) + rng.normal(0, 0.25, width)[None, :] + rng.normal(0, 0.05, (n_frames, width))
        perf_rel, perf_sha = writer.write_midi(notes, f"midi/perf/{sid}.mid")
        score_rel, score_sha = score_files[passage.key]
        row = {"segment_id": sid, "piece": passage.piece.name, "passage": passage.key, "performer": perf.name,
               "perf_midi": perf_rel, "perf_midi_sha": perf_sha, "score_midi": score_rel, "score_midi_sha": score_sha}
        return row, frames.astype(np.float32), props

    # ---- T1: labelled performances, 6-10 performers per passage.
    t1: list[tuple[dict, np.ndarray, dict, Passage, Performer]] = []
    t1_passages: list[Passage] = []
    for piece in t1_pieces:
        t1_passages += passages_of(piece, 6)
        for passage in t1_passages[-6:]:
            chosen = rng.choice(len(performers), size=int(rng.integers(6, 11)), replace=False)
            for pi in sorted(chosen):
                row, frames, props = render(passage, performers[pi], f"{passage.key}_{performers[pi].name}")
                t1.append((row, frames, props, passage, performers[pi]))
    props = np.array([[p[k] for k in PROPERTIES] for _, _, p, _, _ in t1])  # [M, K]
    z = (props - props.mean(0)) / np.maximum(props.std(0), 1e-9)
    weights = np.array([[w.get(k, 0.0) for k in PROPERTIES] for w in LABEL_WEIGHTS])  # [19, K]
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    passage_keys = sorted({r[3].key for r in t1})
    offsets = {k: rng.normal(0, PASSAGE_EFFECT_SD, len(LABEL_WEIGHTS)) for k in passage_keys}
    for i, (row, frames, _, passage, perf) in enumerate(t1):
        score = z[i] @ weights.T + offsets[passage.key] + rng.normal(0, LABEL_NOISE_SD, len(LABEL_WEIGHTS))
        row["labels19"] = np.clip(_sig(0.5 * score), 0.0, 1.0)
        writer.add("T1", row, frames)
        # STOP: a teacher stops weaker, noisier takes.
        stop_score = -3.0 * (perf.skill - 0.5) + 0.5 * z[i, PROPERTIES.index("jitter")] + rng.normal(0, 0.6)
        writer.stop[row["segment_id"]] = int(stop_score > 0.6)

    # ---- T2: competition rounds; placement from overall skill plus jury noise.
    comp_passages = [p for piece in t2_pieces for p in passages_of(piece, 3)]
    for r in range(count(12)):
        passage = comp_passages[r % len(comp_passages)]
        chosen = sorted(rng.choice(len(performers), size=int(rng.integers(8, 13)), replace=False))
        merit = np.array([performers[i].skill for i in chosen]) + rng.normal(0, 0.05, len(chosen))
        places = np.empty(len(chosen), dtype=int)
        places[np.argsort(-merit)] = np.arange(1, len(chosen) + 1)
        for pi, place in zip(chosen, places):
            perf = performers[pi]
            row, frames, _ = render(passage, perf, f"round{r:02d}_{perf.name}")
            row.update(placement=int(place), round_id=f"round{r:02d}",
                       placement_score=float(1 - (place - 1) / (len(chosen) - 1)))
            writer.add("T2", row, frames)

    # ---- T3: cross-performer groups on their own pieces (unlabelled).
    t3: list[tuple[dict, np.ndarray]] = []
    for piece in t3_pieces:
        for passage in passages_of(piece, 5):
            for pi in sorted(rng.choice(len(performers), size=5, replace=False)):
                perf = performers[pi]
                row, frames, _ = render(passage, perf, f"{passage.key}_{perf.name}")
                row["group"] = piece.name
                writer.add("T3", row, frames)
                t3.append((row, frames))

    # ---- T4: augmented twins of half the T1 segments (robustness on T1 validation) and half of T3.
    clean = [(r, f) for r, f, *_ in t1] + t3
    pick = sorted(rng.choice(len(t1), size=len(t1) // 2, replace=False).tolist()) + \
        sorted((len(t1) + rng.choice(len(t3), size=len(t3) // 2, replace=False)).tolist())
    for j in pick:
        row, frames = clean[j]
        kind = AUGMENTATIONS[int(rng.integers(len(AUGMENTATIONS)))]
        aug_row = {k: row[k] for k in ("piece", "passage", "performer", "perf_midi", "perf_midi_sha",
                                       "score_midi", "score_midi_sha")}
        aug_row.update(segment_id=f"{row['segment_id']}~{kind}", clean_id=row["segment_id"], augmentation=kind)
        writer.add("T4", aug_row, _augment(frames, kind, rng))
    root = writer.close()
    write_planted(out, t1_passages, projection, seed, max_frames, width)
    return root
