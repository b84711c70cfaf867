"""Running a chaos plan: participant processes, etcd faults, the history, the verdict.

A :class:`Run` owns a run directory (the history as JSON lines, each process's
stderr, and on failure the etcd members' logs), a :class:`Fleet` of participant
processes and the execution of a :class:`~.schedule.Plan` against them and the
cluster. Every process it starts dies with the test process (``PR_SET_PDEATHSIG``)
and is killed when the run ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import gevent

from geventc import Client, Compare, Op
from geventc.testing import EtcdCluster, EtcdMember

from . import resources
from .history import History
from .schedule import MEMBER_DOWN, MEMBER_UP, Action, Plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "tests.chaos.participants"

#: the fixed seeds of the bounded run (``GEVENTC_CHAOS_SEED`` replaces them)
SEEDS = (1, 2)
#: one line per finished run (property, seed, duration, faults), for the test report
SUMMARIES: list[str] = []


F = TypeVar("F", bound=Callable[..., Any])


def bounded(seconds: float) -> Callable[[F], F]:
    """The seconds of fault injection of a chaos test in the bounded run (the
    ``seconds`` fixture of ``conftest.py`` gives it, or its share of
    ``GEVENTC_CHAOS_SECONDS``)."""

    def mark(test: F) -> F:
        test.chaos_seconds = seconds  # type: ignore[attr-defined]
        return test

    return mark


@dataclass(frozen=True)
class Settings:
    """The chaos run's settings, from the environment.

    ``GEVENTC_CHAOS_SECONDS``: total seconds of fault injection, shared equally by the
    chaos tests selected (unset: each test's bounded default); ``GEVENTC_CHAOS_SEED``:
    run this seed (or comma-separated seeds) instead of the fixed ones;
    ``GEVENTC_CHAOS_DIR``: where run directories go; ``GEVENTC_CHAOS_KEEP=1``: keep
    the run directories of passing runs too.
    """

    seconds: float | None
    seeds: tuple[int, ...]
    directory: str
    keep: bool
    #: the seeds came from ``GEVENTC_CHAOS_SEED`` (not the fixed ones)
    seeds_given: bool = False

    def bounded_seeds(self, count: int) -> tuple[int, ...]:
        """The seeds of a property whose bounded run takes the first ``count`` fixed
        ones; every seed given in ``GEVENTC_CHAOS_SEED``."""
        return self.seeds if self.seeds_given else self.seeds[:count]

    @classmethod
    def from_env(cls) -> Settings:
        seconds = os.environ.get("GEVENTC_CHAOS_SECONDS")
        seeds = os.environ.get("GEVENTC_CHAOS_SEED")
        return cls(
            seconds=float(seconds) if seconds else None,
            seeds=tuple(int(s) for s in seeds.split(",")) if seeds else SEEDS,
            directory=os.environ.get("GEVENTC_CHAOS_DIR")
            or os.path.join(tempfile.gettempdir(), "geventc-chaos"),
            keep=os.environ.get("GEVENTC_CHAOS_KEEP", "") not in ("", "0"),
            seeds_given=bool(seeds),
        )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the child when the test process dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    """One participant process (generation ``gen`` of its slot)."""

    slot: str
    gen: int
    popen: subprocess.Popen[bytes]
    paused: bool = False

    @property
    def name(self) -> str:
        return f"{self.slot}.{self.gen}"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Slot:
    """A logical participant: how to start it, and its current process."""

    name: str
    module: str
    make_args: Callable[[int], list[str]]
    current: Proc | None = None
    generations: int = 0
    procs: list[Proc] = field(default_factory=list)


class Fleet:
    """The participant processes of a run."""

    def __init__(self, history: History, directory: str) -> None:
        self.history = history
        self.directory = directory
        self.slots: dict[str, Slot] = {}

    def add(self, name: str, module: str, make_args: Callable[[int], list[str]]) -> Proc:
        """Define a slot and start its first process."""
        self.slots[name] = Slot(name, module, make_args)
        return self.spawn(name)

    def spawn(self, name: str) -> Proc:
        """Start a new generation of a slot."""
        slot = self.slots[name]
        if slot.current is not None and not slot.current.alive:
            _kill(slot.current)  # it ended on its own: close its stdin
        gen = slot.generations
        slot.generations += 1
        args = slot.make_args(gen)
        stderr = open(os.path.join(self.directory, f"{name}.{gen}.stderr"), "wb")  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", f"{PACKAGE}.{slot.module}", *args],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                preexec_fn=_die_with_parent,
            )
        finally:
            stderr.close()
        proc = Proc(name, gen, popen)
        slot.current = proc
        slot.procs.append(proc)
        assert popen.stdout is not None
        self.history.record(
            "harness", "spawn", proc=proc.name, slot=name, gen=gen, pid=popen.pid, args=args
        )
        self.history.follow(proc.name, popen.stdout)
        return proc

    def current(self, name: str) -> Proc | None:
        return self.slots[name].current

    def procs(self) -> list[Proc]:
        """The current process of every slot that has one."""
        return [s.current for s in self.slots.values() if s.current is not None]

    def kill(self, name: str) -> Proc | None:
        proc = self.slots[name].current
        if proc is None:
            return None
        _kill(proc)
        self.history.record("harness", "kill", proc=proc.name, slot=name)
        self.slots[name].current = None
        return proc

    def pause(self, name: str) -> Proc | None:
        proc = self.slots[name].current
        if proc is None or not proc.alive:
            return None
        proc.popen.send_signal(signal.SIGSTOP)
        proc.paused = True
        self.history.record("harness", "pause", proc=proc.name, slot=name)
        return proc

    def resume(self, name: str) -> Proc | None:
        proc = self.slots[name].current
        if proc is None or not proc.paused:
            return None
        proc.popen.send_signal(signal.SIGCONT)
        proc.paused = False
        self.history.record("harness", "resume", proc=proc.name, slot=name)
        return proc

    def command(self, name: str, text: str) -> Proc | None:
        """Send a command line to the slot's process (read when it runs)."""
        proc = self.slots[name].current
        if proc is None or proc.popen.stdin is None:
            return None
        self.history.record("harness", "command", proc=proc.name, slot=name, text=text)
        with contextlib.suppress(OSError):
            proc.popen.stdin.write(text.encode() + b"\n")
            proc.popen.stdin.flush()
        return proc

    def wait_ready(self, procs: Sequence[Proc], timeout: float, ev: str = "ready") -> None:
        """Wait until each process recorded ``ev``; raise if one crashed or timed out."""
        names = {p.name for p in procs}

        def missing() -> set[str]:
            done = {r["src"] for r in self.history.records if r["src"] in names and r["ev"] == ev}
            dead = {
                r["src"]
                for r in self.history.records
                if r["src"] in names and r["ev"] in ("crash", "eof")
            }
            if dead - done:
                raise RuntimeError(f"participants ended before {ev!r}: {sorted(dead - done)}")
            return names - done

        if not self.history.wait_for(lambda: not missing(), timeout):
            raise RuntimeError(f"participants not {ev} within {timeout}s: {sorted(missing())}")

    def stop_all(self) -> None:
        """Kill every process this fleet ever started."""
        for slot in self.slots.values():
            for proc in slot.procs:
                _kill(proc)


def _kill(proc: Proc) -> None:
    if proc.popen.poll() is None:
        with contextlib.suppress(OSError):
            proc.popen.kill()  # SIGKILL also ends a stopped process
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)
    proc.paused = False
    if proc.popen.stdin is not None:
        with contextlib.suppress(OSError):
            proc.popen.stdin.close()


class Run:
    """One chaos run: its directory, history, fleet and verdict."""

    def __init__(
        self,
        prop: str,
        seed: int,
        cluster: EtcdCluster,
        settings: Settings,
        *,
        test_id: str = "",
    ) -> None:
        self.prop = prop
        self.seed = seed
        self.cluster = cluster
        self.settings = settings
        self.test_id = test_id
        os.makedirs(settings.directory, exist_ok=True)
        self.directory = tempfile.mkdtemp(prefix=f"{prop}-seed{seed}-", dir=settings.directory)
        self.history = History(os.path.join(self.directory, "history.jsonl"))
        self.fleet = Fleet(self.history, self.directory)
        self.namespace = f"chaos/{os.path.basename(self.directory)}"
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.failed = False
        self.duration = 0.0
        self._client: Client | None = None
        #: the stored prefix of the election whose leader key ``steal`` actions delete
        self.election: str | None = None
        #: the highest revision a ``compact`` action may compact (None: any); a run
        #: whose ground truth is a reference watch bounds it by what that delivered
        self.compact_limit: Callable[[], int] | None = None
        #: the test module of the replay command, and the re-check command's start
        self.test_module = "tests/chaos/test_chaos.py"
        self.recheck = f"python -m tests.chaos.checks {prop}"
        #: extra keyword arguments of the harness's own client (an auth cluster's
        #: credentials: ``EtcdCluster.client_options()``)
        self.client_options: dict[str, Any] = {}
        self.seconds = 0.0  # of the plan executed
        #: member episodes in progress (ref -> the members in trouble), replaces running
        self._episodes: dict[int, list[EtcdMember]] = {}
        self._replacing: dict[int, gevent.Greenlet[[EtcdMember], None]] = {}
        #: ``pause-holder`` actions in effect (ref -> the slot paused)
        self._holders_paused: dict[int, str] = {}
        #: ``member-failpoint`` episodes in progress (ref -> the member, the failpoint)
        self._armed: dict[int, tuple[EtcdMember, str]] = {}
        #: the harness process's own resources (it also runs the members' proxies)
        self._sampler = gevent.spawn(
            resources.sample_forever,
            partial(self.history.record, "harness"),
            extra=lambda: {"records": len(self.history.records)},
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.duration = time.monotonic() - self.started
        self._sampler.kill()
        gevent.killall(list(self._replacing.values()))
        self.fleet.stop_all()
        self.history.record("harness", "end", counts=dict(self.counts))
        self.history.close()
        if self._client is not None:
            self._client.close()
        if exc is not None and not self.failed and isinstance(exc, BaseException):
            # not a property violation but the run itself broke: say where to look
            with contextlib.suppress(AttributeError):  # add_note: Python 3.11+
                exc.add_note(
                    f"chaos run {self.prop} seed {self.seed}: history {self.history.path} "
                    f"(kept); replay: {self.replay_command()}"
                )
        if exc is not None or self.failed:
            self.failed = True
            for member in self.cluster.members:
                with contextlib.suppress(OSError):
                    shutil.copy(member.log_path, self.directory)
        elif not self.settings.keep:
            shutil.rmtree(self.directory, ignore_errors=True)
        SUMMARIES.append(self.summary())
        print(self.summary())

    # --- helpers -----------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return list(self.cluster.endpoints)

    def endpoints_for(self, index: int) -> str:
        """The endpoint list rotated by ``index``: participants start on different
        members."""
        eps = self.endpoints
        k = index % len(eps)
        return ",".join(eps[k:] + eps[:k])

    def base_args(self, index: int) -> list[str]:
        return ["--endpoints", self.endpoints_for(index), "--namespace", self.namespace]

    def direct_endpoints_for(self, index: int) -> str:
        """The members' own client URLs (no proxy), rotated by ``index``."""
        eps = [m.client_url for m in self.cluster.members]
        k = index % len(eps)
        return ",".join(eps[k:] + eps[:k])

    @property
    def client(self) -> Client:
        """A client of the harness itself (raw keys: namespace them by hand). It talks
        to the members directly: the operator is not behind the faulty proxies."""
        if self._client is None:
            self._client = Client(
                [m.client_url for m in self.cluster.members], timeout=5.0, **self.client_options
            )
        return self._client

    def key(self, path: str) -> str:
        """The stored key of a participant's key ``path``."""
        return f"/{self.namespace}/{path.lstrip('/')}"

    def replay_command(self) -> str:
        # the test selected alone gets all of GEVENTC_CHAOS_SECONDS: give it its share
        seconds = f"GEVENTC_CHAOS_SECONDS={self.seconds:g} " if self.settings.seconds else ""
        select = f" -k '{self.test_id}'" if self.test_id else ""
        return (
            f"{seconds}GEVENTC_CHAOS_SEED={self.seed} GEVENTC_CHAOS_KEEP=1 "
            f"pytest-gevent -m chaos {self.test_module}{select}"
        )

    def verdict(self, violations: Sequence[str]) -> None:
        """Fail the test with the seed, the history's path and the replay command when
        a check found violations."""
        if not violations:
            return
        self.failed = True
        self.history.record("harness", "violations", violations=list(violations))
        self.history.flush()
        shown = "\n  - ".join(violations[:25])
        more = f"\n  ... and {len(violations) - 25} more" if len(violations) > 25 else ""
        raise AssertionError(
            f"chaos property {self.prop} failed for seed {self.seed} "
            f"({len(violations)} violations):\n  - {shown}{more}\n"
            f"history: {self.history.path} (kept)\n"
            f"re-check it: {self.recheck} {self.history.path}\n"
            f"replay: {self.replay_command()}"
        )

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none"
        return f"{self.prop} seed {self.seed}: {self.duration:.1f}s, faults injected: {faults}" + (
            f" [history kept: {self.history.path}]" if self.failed or self.settings.keep else ""
        )

    # --- executing a plan --------------------------------------------------------------

    def execute(self, plan: Plan) -> None:
        """Run the plan's actions at their times (late ones at once), recording each."""
        self.history.record(
            "harness",
            "plan",
            seed=plan.seed,
            duration=plan.duration,
            profile=plan.profile,
            planned=plan.counts(),
        )
        self.seconds = plan.duration
        started = time.monotonic()
        for action in plan.actions:
            delay = started + action.at - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            try:
                self._apply(action)
            except Exception as exc:  # record it: a harness hiccup is not a verdict
                self.history.record(
                    "harness",
                    "action-failed",
                    kind=action.kind,
                    target=action.target,
                    error=repr(exc),
                )
        self.history.record("harness", "faults-end", counts=dict(self.counts))

    def _apply(self, action: Action) -> None:
        kind, target = action.kind, action.target
        if kind in MEMBER_DOWN:
            self._member_down(action)
        elif kind in MEMBER_UP:
            self._member_up(action)
        elif kind == "compact":
            revision = self.client.get_prefix("/chaos-none/", count_only=True).header.revision
            if self.compact_limit is not None:
                revision = min(revision, self.compact_limit())
            self.client.compact(revision)
            self.counts[kind] += 1
            self.history.record("harness", "compact", revision=revision)
        elif kind == "steal":
            self._steal()
        elif kind == "pause-holder":
            slot = self._holder()
            if slot is not None and self.fleet.pause(slot):
                self._holders_paused[action.ref] = slot
                self.counts[kind] += 1
        elif kind == "resume-holder":
            slot = self._holders_paused.pop(action.ref, None)
            if slot is not None:
                self.fleet.resume(slot)
        elif kind == "kill":
            if self.fleet.kill(target):
                self.counts["participant-kill"] += 1
        elif kind == "respawn":
            if self.fleet.current(target) is None:
                self.fleet.spawn(target)
        elif kind == "pause":
            if self.fleet.pause(target):
                self.counts["participant-pause"] += 1
        elif kind == "resume":
            self.fleet.resume(target)
        elif kind == "command" and action.arg == "respawn":
            # a new generation once the last one ended on its own (after ``close``)
            proc = self.fleet.current(target)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(30)
            if proc is None or not proc.alive:
                self.fleet.spawn(target)
                self.counts["respawn"] += 1
        elif kind == "command":
            if self.fleet.command(target, action.arg):
                self.counts[f"command-{action.arg}"] += 1
        else:
            raise ValueError(f"unknown action {kind!r}")

    def _member_down(self, action: Action) -> None:
        """Start a member episode (the previous one is over and the cluster healthy)."""
        self._members_settled()
        kind, target, cluster = action.kind, action.target, self.cluster
        size = len(cluster.members)
        if kind == "member-pause-two":
            victims = [cluster.members[(int(target) + k) % size] for k in (0, 1)]
        elif kind == "member-blackhole-all":
            victims = list(cluster.members)
        else:
            victims = [self._resolve_member(target, action.ref)]
        self._episodes[action.ref] = victims  # before the fault: its end undoes a part
        for member in victims:
            if kind == "member-kill":
                cluster.kill(member)
            elif kind in ("member-pause", "member-pause-two"):
                cluster.pause(member)
            elif kind in ("member-blackhole", "member-blackhole-all"):
                cluster.blackhole(member)  # its client proxy is frozen
            elif kind == "member-isolate":
                cluster.isolate(member)  # cut from its peers; clients still reach it
            elif kind == "member-failpoint":  # it crashes where etcd passes that point
                self._arm_failpoint(member, action)
            elif kind == "member-replace":  # as long as it takes, in its own greenlet
                self._replacing[action.ref] = gevent.spawn(self._replace, member)
            else:
                raise ValueError(f"unknown member fault {kind!r}")
        self.counts[kind + ("-leader" if target == "leader" else "")] += 1
        names = [m.name for m in victims]
        if len(victims) == 1:
            self.history.record("harness", kind, member=names[0], target=target)
        else:
            self.history.record("harness", kind, members=names)

    def _member_up(self, action: Action) -> None:
        """End a member episode."""
        kind, cluster = action.kind, self.cluster
        victims = self._episodes.pop(action.ref)
        fields: dict[str, Any] = {}
        armed = self._armed.pop(action.ref, None)
        if armed is not None:  # did the failpoint crash it (or is it still running)?
            fields.update(failpoint=armed[1], crashed=not armed[0].running)
        if kind == "member-rejoin":
            cluster.partition([cluster.members])  # one group: no cut left
        elif kind == "member-replaced":
            # the next member fault waits until the replace is done: not the schedule
            replacing = self._replacing.get(action.ref)
            fields["done"] = replacing is None or replacing.ready()
        for member in victims:
            if kind == "member-restart":
                cluster.restart(member, wait=False)
            elif kind in ("member-resume", "member-resume-two"):
                cluster.resume(member)
            elif kind in ("member-unblackhole", "member-unblackhole-all"):
                cluster.proxy(member).heal()
        names = [m.name for m in victims]
        if len(victims) == 1:
            self.history.record("harness", kind, member=names[0], **fields)
        else:
            self.history.record("harness", kind, members=names, **fields)

    def _arm_failpoint(self, member: EtcdMember, action: Action) -> None:
        """Arm etcd's failpoint ``action.arg`` on ``member`` with ``panic`` (it crashes
        the next time it passes there; the episode's ``member-restart`` brings it back
        with its data). The cluster must be a failpoint build whose ``member_env`` is a
        :class:`geventc.testing.failpoints.Gofail`."""
        from geventc.testing.failpoints import Gofail

        gofail = self.cluster.member_env
        if not isinstance(gofail, Gofail):
            raise RuntimeError(
                "member-failpoint needs a failpoint build: EtcdCluster(binary="
                "find_release('3.6-failpoints').binary, member_env=Gofail())"
            )
        gofail.enable(member, action.arg, "panic")
        self._armed[action.ref] = (member, action.arg)
        self.history.record("harness", "failpoint-armed", member=member.name, failpoint=action.arg)

    def _replace(self, member: EtcdMember) -> None:
        """Wipe ``member`` and add it back (``EtcdCluster.replace``), recording when it
        is done (``member-replace-done``, with how long it took) or how it failed."""
        started = time.monotonic()
        try:
            self.cluster.replace(member, wait=False)
        except Exception as exc:
            self.history.record(
                "harness",
                "action-failed",
                kind="member-replace",
                target=member.name,
                error=repr(exc),
            )
        else:
            took = time.monotonic() - started
            self.history.record("harness", "member-replace-done", member=member.name, took=took)

    def _steal(self) -> None:
        """Delete the election's leader key behind its holder's back (as an operator
        might): its holder must stop leading, and its fenced writes must fail."""
        if self.election is None:
            raise RuntimeError("no election to steal from")
        first = self.client.get_prefix(
            self.election, sort_target="CREATE", sort_order="ASCEND", limit=1
        )
        if not first.kvs:
            return
        kv = first.kvs[0]
        sent = time.monotonic()  # the deletion happens after this: the victim's cut-off
        deleted = self.client.txn(
            [Compare.create_revision(kv.key) == kv.create_revision], [Op.delete(kv.key)]
        )
        if deleted.succeeded:
            self.counts["steal"] += 1
            self.history.record(
                "harness",
                "steal",
                t=sent,
                victim=kv.value_str,
                token=kv.create_revision,
                revision=deleted.header.revision,
            )

    def _holder(self) -> str | None:
        """The slot of the live, running process that acquired last and still holds
        (its last ``status`` is ACQUIRED), or None."""
        running = {p.name: p.slot for p in self.fleet.procs() if p.alive and not p.paused}
        seen: set[str] = set()
        for r in reversed(self.history.records):
            src = r["src"]
            if r["ev"] == "status" and src in running and src not in seen:
                if r["status"] == "ACQUIRED":
                    return running[src]
                seen.add(src)
        return None

    def _members_settled(self, timeout: float = 10.0) -> None:
        """Before taking a member down: the previous one is back and healthy (so at most
        one is ever down); a replace still running is waited for first."""
        gevent.joinall(list(self._replacing.values()), timeout=60.0)
        self._replacing = {ref: g for ref, g in self._replacing.items() if not g.ready()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._replacing and all(
                m.running and not m.paused for m in self.cluster.members
            ):
                try:
                    self.cluster.wait_healthy(timeout=max(0.1, deadline - time.monotonic()))
                    return
                except RuntimeError:
                    pass
            gevent.sleep(0.1)
        self.history.record("harness", "members-unsettled")

    def _resolve_member(self, target: str, ref: int) -> EtcdMember:
        if target != "leader":
            return self.cluster.members[int(target)]
        try:
            return self.cluster.leader()
        except RuntimeError:
            return self.cluster.members[ref % len(self.cluster.members)]

    def heal(self, *, ready: str | None = "ready", timeout: float = 30.0) -> float:
        """End every fault: resume paused processes, respawn killed slots, let a replace
        finish, restart and resume members, heal their proxies and the network between
        them; wait until the cluster is healthy and respawned processes are ready.
        Returns (and records as ``healed``) the time it was done."""
        gevent.joinall(list(self._replacing.values()), timeout=60.0)
        self._replacing.clear()
        respawned = []
        for name, slot in self.fleet.slots.items():
            if slot.current is None:
                respawned.append(self.fleet.spawn(name))
            elif slot.current.paused:
                self.fleet.resume(name)
        self.cluster.heal()
        if ready and respawned:
            self.fleet.wait_ready(respawned, timeout, ready)
        return float(self.history.record("harness", "healed")["t"])

    def alive(self) -> list[str]:
        """Names of the processes alive now."""
        return [p.name for p in self.fleet.procs() if p.alive]

    def check_alive(self) -> list[str]:
        """Violations for participants that died on their own (crash or exit)."""
        return [
            f"{r['src']} crashed: {r.get('error')}\n{r.get('traceback', '')}"
            for r in self.history.records
            if r["ev"] == "crash"
        ]

    def wait(self, seconds: float) -> None:
        gevent.sleep(max(0.0, seconds))

    def record(self, ev: str, **fields: Any) -> None:
        self.history.record("harness", ev, **fields)
