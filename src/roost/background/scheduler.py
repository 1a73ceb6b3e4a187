"""Schedules: runs of an agent started at the ticks of a cron expression.

    schedule = await runtime.scheduler.create("acme", "reporter", cron="0 9 * * 1-5",
                                              timezone="Europe/Paris", input="Daily report")

Cron expressions are croniter's: five fields, or six with seconds last
(`* * * * * *` = every second), evaluated in the schedule's IANA time zone.

Every instance with `background.scheduler` runs `fire_forever`: it holds the schedules (re-read
every `schedules_refresh_s`, and at once when a change is announced on the bus), sleeps until
the earliest next tick, and then, for each due tick, *claims* it in the store
(`BackgroundStore.claim_tick`, a put-if-absent of (schedule, tick)). The one instance whose
claim wins fires the tick: a session (a new one, or the schedule's fixed one) and a run queued
in the durable queue due at the tick, which any instance's worker then runs. So a tick fires
once across the fleet, whatever the number of instances and however their clocks agree.

Catch-up. A tick is *missed* when it is more than `misfire_grace_s` in the past when an
instance first looks at it (every instance was down, or the schedule was paused). Per
schedule, `catch_up = "skip"` drops missed ticks; `"run_once"` fires the newest missed tick
once (however many were missed), then carries on with the next ones. A paused schedule fires
nothing; enabled again, its ticks missed while paused follow the same policy.

Known limit: an instance that dies between winning a tick's claim and queuing its run loses
that tick (the claim says it fired).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import CroniterError, croniter

from roost.background.config import BackgroundConfig
from roost.background.records import Schedule
from roost.errors import Conflict, InvalidInput, NotFound, RoostError
from roost.runtime.handle import new_id
from roost.sessions.records import RunRecord, now

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.background")

CHANNEL = "schedules"
_MAX_TICKS_PER_LOOK = 100


class ScheduleNotFound(NotFound):
    type = "schedule_not_found"


def check_cron(expression: str) -> str:
    expression = " ".join(expression.split())
    if len(expression.split()) not in (5, 6) or not croniter.is_valid(expression):
        raise InvalidInput("not a cron expression (five fields, or six with seconds last)",
                           field="cron")
    try:
        croniter(expression, now()).get_next(float)
    except (CroniterError, ValueError, OverflowError):  # valid, but no date matches
        raise InvalidInput("the cron expression never fires", field="cron") from None
    return expression


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown IANA time zone {name!r}", field="timezone") from None


def next_tick(schedule: Schedule, after: float) -> float:
    """The schedule's first tick strictly after `after` (epoch seconds)."""
    zone = ZoneInfo(schedule.timezone)
    return float(croniter(schedule.cron, datetime.fromtimestamp(after, tz=zone)).get_next(float))


def prev_tick(schedule: Schedule, at: float) -> float:
    """The schedule's newest tick at or before `at`."""
    zone = ZoneInfo(schedule.timezone)
    return float(croniter(schedule.cron, datetime.fromtimestamp(at + 1e-6, tz=zone)
                          ).get_prev(float))


def plan(schedule: Schedule, clock: float, grace: float) -> tuple[list[float], float]:
    """The ticks to fire now (oldest first) and the next tick after them."""
    start = schedule.last_tick if schedule.last_tick is not None else schedule.created_at
    tick = next_tick(schedule, start)
    fire: list[float] = []
    if tick < clock - grace:  # missed ticks: jump over them in O(1), however many
        if schedule.catch_up == "run_once":
            fire.append(prev_tick(schedule, clock - grace))
        tick = next_tick(schedule, clock - grace)
    while tick <= clock and len(fire) < _MAX_TICKS_PER_LOOK:
        fire.append(tick)
        tick = next_tick(schedule, tick)
    return fire, tick


class Scheduler:
    def __init__(self, runtime: Runtime, config: BackgroundConfig) -> None:
        self.runtime = runtime
        self.config = config
        self._changed = asyncio.Event()
        self.fired = 0
        self.lost = 0  # ticks another instance fired
        #: seconds from each fired tick to its run queued (the newest 10,000): jitter
        self.delays: list[float] = []

    @property
    def queue(self) -> Any:
        return self.runtime.background.queue

    # -- the API ----------------------------------------------------------------------
    async def create(self, tenant: str, agent: str, *, cron: str, input: str,
                     timezone: str = "UTC", session_policy: str = "new",
                     session_id: str | None = None, enabled: bool = True,
                     catch_up: str = "skip",
                     user_id: str | None = None) -> Schedule:
        rt = self.runtime
        hosted = rt.agents.hosted(agent)  # AgentNotFound: 404
        cron = check_cron(cron)
        check_timezone(timezone)
        if not input.strip():
            raise InvalidInput("input must not be empty", field="input")
        if len(input) > hosted.agent.limits.max_input_chars:
            raise InvalidInput("input is too long", field="input")
        if session_policy == "fixed":
            if session_id is None:
                raise InvalidInput("a fixed session policy needs session_id",
                                   field="session_id")
            session = await rt.store.get_session(tenant, session_id)  # 404 if not the tenant's
            if session.agent != agent:
                raise InvalidInput(f"session {session_id} is not a session of {agent!r}",
                                   field="session_id")
        elif session_id is not None:
            raise InvalidInput("session_id goes with session_policy 'fixed'", field="session_id")
        existing = await self.queue.list_schedules(tenant)
        if len(existing) >= self.config.max_schedules_per_tenant:
            raise Conflict(f"the tenant has {len(existing)} schedules, the most allowed")
        schedule = Schedule(id=new_id("sch"), tenant=tenant, agent=agent, cron=cron,
                            timezone=timezone, input=input,
                            session_policy=session_policy,  # type: ignore[arg-type]
                            session_id=session_id, user_id=user_id, enabled=enabled,
                            catch_up=catch_up)  # type: ignore[arg-type]
        await self.queue.put_schedule(schedule)
        self._announce()
        return schedule

    async def get(self, tenant: str, schedule_id: str, agent: str | None = None) -> Schedule:
        schedule = await self.queue.get_schedule(tenant, schedule_id)
        if schedule is None or (agent is not None and schedule.agent != agent):
            raise ScheduleNotFound(f"no schedule {schedule_id!r}", schedule_id=schedule_id)
        return schedule  # type: ignore[no-any-return]

    async def list(self, tenant: str, agent: str | None = None) -> list[Schedule]:
        return await self.queue.list_schedules(tenant, agent)  # type: ignore[no-any-return]

    async def update(self, tenant: str, schedule_id: str, agent: str | None = None,
                     **changes: Any) -> Schedule:
        """Pause or enable (`enabled`), or change the cron, time zone, input, catch-up."""
        schedule = await self.get(tenant, schedule_id, agent)
        if "cron" in changes:
            changes["cron"] = check_cron(changes["cron"])
        if "timezone" in changes:
            check_timezone(changes["timezone"])
        if changes.get("enabled") and not schedule.enabled:
            # Enabled again: its ticks while paused are missed ticks, counted from now.
            changes.setdefault("last_tick", max(schedule.last_tick or 0.0, now()))
            if schedule.catch_up == "run_once":
                changes["last_tick"] = schedule.last_tick
        schedule = msgspec.structs.replace(schedule, updated_at=now(), **changes)
        await self.queue.put_schedule(schedule)
        self._announce()
        return schedule

    async def delete(self, tenant: str, schedule_id: str, agent: str | None = None) -> None:
        await self.get(tenant, schedule_id, agent)
        await self.queue.delete_schedule(tenant, schedule_id)
        self._announce()

    def next_fire(self, schedule: Schedule) -> float | None:
        """When the schedule fires next (None while paused)."""
        if not schedule.enabled:
            return None
        try:
            ticks, after = plan(schedule, now(), self.config.misfire_grace_s)
        except (CroniterError, ValueError, OverflowError):
            return None
        return ticks[0] if ticks else after

    def _announce(self) -> None:
        self.runtime.bus.publish(CHANNEL, b"")
        self._changed.set()

    # -- firing -----------------------------------------------------------------------
    async def listen_forever(self) -> None:
        async with self.runtime.bus.subscribe(CHANNEL) as subscription:
            async for _ in subscription:
                self._changed.set()

    async def fire_forever(self) -> None:
        cfg = self.config
        schedules: list[Schedule] = []
        loaded = -cfg.schedules_refresh_s
        pruned = time.monotonic()
        while True:
            if self._changed.is_set() or time.monotonic() - loaded >= cfg.schedules_refresh_s:
                self._changed.clear()
                try:
                    schedules = await self.queue.list_schedules(None)
                    loaded = time.monotonic()
                except RoostError as exc:
                    log.warning("scheduler: cannot read schedules: %s", exc)
            wake = now() + cfg.schedules_refresh_s
            for schedule in schedules:
                if not schedule.enabled or self.runtime.draining:
                    continue
                try:
                    ticks, after = plan(schedule, now(), cfg.misfire_grace_s)
                except (CroniterError, ValueError, OverflowError) as exc:
                    log.warning("schedule %s: no next tick: %s", schedule.id, exc)
                    continue
                for tick in ticks:
                    await self._fire(schedule, tick)
                wake = min(wake, after)
            if time.monotonic() - pruned > 60:
                pruned = time.monotonic()
                try:
                    await self.queue.prune_ticks(now() - cfg.tick_retention_s)
                except RoostError as exc:
                    log.warning("scheduler: cannot prune ticks: %s", exc)
            delay = wake - now()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    async def _fire(self, schedule: Schedule, tick: float) -> None:
        """Claim the tick; when this instance wins, queue its run."""
        rt = self.runtime
        run_id = new_id("run")
        try:
            won = await self.queue.claim_tick(schedule.tenant, schedule.id, tick, run_id)
        except RoostError as exc:
            log.warning("schedule %s: tick %s not claimed: %s", schedule.id, tick, exc)
            return  # the next look tries again, within the grace
        schedule.last_tick = tick
        if not won:
            self.lost += 1
            return
        try:
            hosted = rt.agents.hosted(schedule.agent)
            session_id = schedule.session_id
            if schedule.session_policy == "new" or session_id is None:
                session = await rt.create_session(
                    schedule.tenant, schedule.agent, user_id=schedule.user_id,
                    metadata={"schedule_id": schedule.id, "tick": tick})
                session_id = session.id
            run = RunRecord(id=run_id, session_id=session_id, tenant=schedule.tenant,
                            agent=schedule.agent, model=hosted.model.name, status="queued",
                            input=schedule.input, attempt=0)
            await rt.background.enqueue(run, tick)
        except RoostError as exc:
            log.warning("schedule %s: tick %s fired but its run could not be queued: %s",
                        schedule.id, tick, exc)
            return
        self.fired += 1
        self.delays.append(now() - tick)
        del self.delays[:-10_000]
        log.info("schedule %s fired tick %s: run %s", schedule.id, tick, run_id)

    def statistics(self) -> dict[str, int]:
        return {"fired": self.fired, "lost": self.lost}
