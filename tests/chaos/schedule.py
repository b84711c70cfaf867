"""Seeded fault schedules: the same seed, duration and profile always give the same plan.

A :class:`Plan` is a list of timed :class:`Action` s (seconds after the fault phase
starts) on participant *slots* (a slot is one logical participant; a killed process is
respawned in its slot as a new generation) and on etcd *members*. Member faults come in
episodes that never overlap: at most one member is in trouble at a time (killed,
paused, cut off from its peers, behind a frozen proxy, or being wiped and re-added), so
the cluster keeps its quorum, except in ``pause-two`` episodes (if the profile asks for
them): two members paused together for a short moment, so the cluster is unavailable.
A ``blackhole-all`` episode (freshness only) freezes every member's client proxy: the
cluster keeps its quorum, but clients that use the proxies reach no member. Only
"which member is the raft leader now" is resolved when an action runs (target
``leader``); everything else is fixed by the seed.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

#: The kinds of action; ``*-down`` kinds have a matching ``*-up`` with the same ``ref``.
PARTICIPANT_KINDS = ("kill", "respawn", "pause", "resume", "command")
#: member episodes: the profile's kind -> (the action that starts it, the one that ends it)
EPISODES = {
    "kill": ("member-kill", "member-restart"),
    "kill-leader": ("member-kill", "member-restart"),
    "pause": ("member-pause", "member-resume"),
    "pause-leader": ("member-pause", "member-resume"),
    "pause-two": ("member-pause-two", "member-resume-two"),
    "blackhole": ("member-blackhole", "member-unblackhole"),
    "blackhole-all": ("member-blackhole-all", "member-unblackhole-all"),
    "isolate": ("member-isolate", "member-rejoin"),
    "isolate-leader": ("member-isolate", "member-rejoin"),
    "replace": ("member-replace", "member-replaced"),
    # etcd's own failpoint (the action's ``arg``, from ``Profile.failpoints``) panics the
    # member where it is; it is restarted with its data (a failpoint build's cluster)
    "failpoint": ("member-failpoint", "member-restart"),
    "failpoint-leader": ("member-failpoint", "member-restart"),
}
MEMBER_DOWN = tuple(sorted({down for down, _ in EPISODES.values()}))
MEMBER_UP = tuple(sorted({up for _, up in EPISODES.values()}))
MEMBER_KINDS = (*MEMBER_DOWN, *MEMBER_UP)
OTHER_KINDS = ("compact", "steal", "pause-holder", "resume-holder")


@dataclass(frozen=True, slots=True)
class Action:
    """One fault (or command) at ``at`` seconds: ``target`` is a participant slot, a
    member index (``"0"``..) or ``"leader"``; ``ref`` links a down action to its up
    action; ``arg`` is a command's text."""

    at: float
    kind: str
    target: str
    ref: int = 0
    arg: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Profile:
    """What a property's schedule may contain, and how dense it is."""

    name: str
    #: participant slots and the fault kinds (``kill``, ``pause``, ``short-pause``) each
    #: may get, with weights
    slots: Sequence[str] = ()
    slot_kinds: dict[str, float] = field(default_factory=lambda: {"kill": 1.0, "pause": 1.0})
    #: other kinds (and weights) for some slots
    kinds_of: dict[str, dict[str, float]] = field(default_factory=dict)
    #: seconds between two faults of one slot, and how long they last
    slot_gap: tuple[float, float] = (2.0, 6.0)
    pause_for: tuple[float, float] = (4.0, 5.5)  # past the TTL (set from it)
    short_pause_for: tuple[float, float] = (0.3, 1.5)
    respawn_after: tuple[float, float] = (0.3, 2.5)
    #: member episodes: kind weights (the keys of :data:`EPISODES`: ``kill``, ``pause``,
    #: ``kill-leader``, ``pause-leader``, ``pause-two``, ``blackhole``, ``isolate``,
    #: ``isolate-leader``, ``replace``, ``blackhole-all``), the gap before each and how
    #: long a member stays killed or paused
    members: int = 3
    member_kinds: dict[str, float] = field(
        default_factory=lambda: {"kill": 2.0, "pause": 1.0, "kill-leader": 1.0, "pause-leader": 0.5}
    )
    member_gap: tuple[float, float] = (0.5, 2.5)
    member_down: tuple[float, float] = (1.0, 3.5)
    #: how long both members of a ``pause-two`` episode stay paused
    two_down: tuple[float, float] = (0.5, 1.5)
    #: how long a member's client proxy stays frozen (long enough, often, for clients'
    #: liveness probes to notice: keepalive time + timeout = 4 s)
    blackhole_down: tuple[float, float] = (2.5, 6.5)
    #: how long a member stays cut off from its peers
    isolate_down: tuple[float, float] = (2.0, 5.0)
    #: seconds after a ``replace`` starts when the harness waits for it to be done (it
    #: takes as long as it takes: the remove, the add and the restart)
    replace_down: tuple[float, float] = (1.0, 3.0)
    #: how long every client proxy stays frozen in a ``blackhole-all`` episode (past
    #: the liveness bound, often, so recipes must say they are stale)
    all_down: tuple[float, float] = (4.0, 10.0)
    #: etcd failpoints a ``failpoint`` / ``failpoint-leader`` episode picks from (each
    #: armed with ``panic``: the member crashes there; needs a failpoint build, see
    #: ``geventc.testing.failpoints``), e.g. ``("raftBeforeSave", "raftAfterSave")``
    failpoints: Sequence[str] = ()
    #: the kind of the first member episode (None: dealt like the others), so that even
    #: a short run has the fault that matters most to its property
    opening: str | None = None
    #: no member fault may be in effect during the last ``member_quiet`` seconds
    member_quiet: float = 0.0
    #: seconds between compactions (None: no compaction)
    compact_every: tuple[float, float] | None = None
    #: seconds between deletions of the election's leader key by an "operator" (None:
    #: none); none in the last second
    steal_every: tuple[float, float] | None = None
    #: seconds between pauses (each ``pause_for`` long) of a process that holds now (its
    #: last status is ACQUIRED: the harness picks it when the pause happens), so that
    #: holders really lose their leases while they believe they hold (None: none)
    holder_pause_every: tuple[float, float] | None = None
    #: commands sent to slots (each slot gets these, in order, at random times within
    #: the given fraction of the run)
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    command_window: tuple[float, float] = (0.15, 0.85)


@dataclass(frozen=True, slots=True)
class Plan:
    """The actions of one run, sorted by time."""

    seed: int
    duration: float
    profile: str
    actions: tuple[Action, ...]

    def counts(self) -> dict[str, int]:
        """How many actions of each kind the plan holds."""
        return dict(sorted(Counter(a.kind for a in self.actions).items()))

    def to_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "duration": self.duration,
                "profile": self.profile,
                "actions": [a.to_json() for a in self.actions],
            }
        )


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    names = sorted(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


class _Deck:
    """Member episode kinds dealt from a shuffled deck (each kind as many cards as
    twice its weight, at least one), reshuffled when it runs out: the kinds are mixed
    even in a short run, in the proportions of the weights."""

    def __init__(self, rng: random.Random, weights: Mapping[str, float]) -> None:
        unknown = sorted(set(weights) - set(EPISODES))
        if unknown:
            raise ValueError(f"unknown member fault kinds {unknown}; known: {sorted(EPISODES)}")
        self.rng = rng
        self.cards = [k for k in sorted(weights) for _ in range(_copies(weights[k]))]
        self.left: list[str] = []

    def deal(self) -> str:
        if not self.left:
            self.left = list(self.cards)
            self.rng.shuffle(self.left)
        return self.left.pop()


def _copies(weight: float) -> int:
    return max(1, round(2 * weight)) if weight > 0 else 0


def _down_for(profile: Profile, kind: str) -> tuple[float, float]:
    """How long an episode of ``kind`` lasts (its range)."""
    if kind == "pause-two":
        return profile.two_down
    if kind == "blackhole":
        return profile.blackhole_down
    if kind == "blackhole-all":
        return profile.all_down
    if kind.startswith("isolate"):
        return profile.isolate_down
    if kind == "replace":
        return profile.replace_down
    return profile.member_down


def _failpoint(rng: random.Random, profile: Profile) -> str:
    """The failpoint of a ``failpoint`` episode (one of the profile's)."""
    if not profile.failpoints:
        raise ValueError(f"profile {profile.name!r} has failpoint episodes but no failpoints")
    return rng.choice(sorted(profile.failpoints))


def make_plan(seed: int, duration: float, profile: Profile) -> Plan:
    """The plan for ``seed``: deterministic for a given seed, duration and profile."""
    rng = random.Random(f"{profile.name}:{seed}:{duration}")
    actions: list[Action] = []
    refs = iter(range(1, 1_000_000))

    # member episodes, one at a time
    end = duration - profile.member_quiet
    t = rng.uniform(*profile.member_gap)
    deck = _Deck(rng, profile.member_kinds)
    opening = profile.opening
    if opening is not None and opening not in EPISODES:
        raise ValueError(f"unknown member fault kind {opening!r}; known: {sorted(EPISODES)}")
    while profile.members and deck.cards and t < end - 0.5:
        kind, opening = opening or deck.deal(), None
        up = min(t + rng.uniform(*_down_for(profile, kind)), end)
        member = str(rng.randrange(profile.members))
        # pause-two: this member and the next (no quorum for a moment); blackhole-all:
        # every member's proxy
        target = "leader" if kind.endswith("-leader") else "" if kind == "blackhole-all" else member
        ref = next(refs)
        down_kind, up_kind = EPISODES[kind]
        arg = _failpoint(rng, profile) if kind.startswith("failpoint") else ""
        actions += [Action(t, down_kind, target, ref, arg), Action(up, up_kind, "", ref)]
        t = up + rng.uniform(*profile.member_gap)

    # participant faults, each slot on its own timeline
    for slot in profile.slots:
        t = rng.uniform(0.3, profile.slot_gap[1])
        kinds = profile.kinds_of.get(slot, profile.slot_kinds)
        while kinds and t < duration - 0.3:
            kind = _pick(rng, kinds)
            ref = next(refs)
            if kind == "kill":
                back = min(t + rng.uniform(*profile.respawn_after), duration)
                actions += [Action(t, "kill", slot, ref), Action(back, "respawn", slot, ref)]
            else:
                span = profile.pause_for if kind == "pause" else profile.short_pause_for
                back = min(t + rng.uniform(*span), duration)
                actions += [Action(t, "pause", slot, ref), Action(back, "resume", slot, ref)]
            t = back + rng.uniform(*profile.slot_gap)

    if profile.compact_every is not None:
        t = rng.uniform(*profile.compact_every)
        while t < duration:
            actions.append(Action(t, "compact", ""))
            t += rng.uniform(*profile.compact_every)

    if profile.steal_every is not None:
        t = rng.uniform(*profile.steal_every)
        while t < duration - 1.0:
            actions.append(Action(t, "steal", ""))
            t += rng.uniform(*profile.steal_every)

    if profile.holder_pause_every is not None:
        t = rng.uniform(*profile.holder_pause_every)
        while t < duration - 1.0:
            ref = next(refs)
            back = min(t + rng.uniform(*profile.pause_for), duration)
            actions += [Action(t, "pause-holder", "", ref), Action(back, "resume-holder", "", ref)]
            t = back + rng.uniform(*profile.holder_pause_every)

    lo, hi = profile.command_window
    for slot, commands in sorted(profile.commands.items()):
        times = sorted(rng.uniform(lo * duration, hi * duration) for _ in commands)
        actions += [
            Action(at, "command", slot, arg=text) for at, text in zip(times, commands, strict=True)
        ]

    actions.sort(key=lambda a: (a.at, a.kind, a.target))
    return Plan(seed, duration, profile.name, tuple(actions))
