"""`[background]`: the durable run queue, delayed runs and schedules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BackgroundConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: bool = Field(True, description="this instance claims and runs queued runs")
    poll_interval_s: float = Field(5.0, gt=0, description="the slow look at the queue when "
                                   "no wake-up came over the fleet bus")
    busy_retry_s: float = Field(0.5, gt=0, description="how soon to look again when due runs "
                                "wait and this instance had no free capacity")
    claim_batch: int = Field(32, ge=1, le=1000, description="most runs one claim takes "
                             "(also bounded by the instance's free admission capacity)")
    requeue_delay_s: float = Field(1.0, gt=0, description="a claimed run that could not start "
                                   "(overload, agent paused, session busy) waits this long")
    max_delay_s: float = Field(30 * 86_400.0, gt=0, description="how far ahead run_at may be")
    scheduler: bool = Field(True, description="this instance fires schedules' ticks")
    schedules_refresh_s: float = Field(5.0, gt=0, description="how often the scheduler "
                                       "re-reads the schedules (changes also arrive on the bus)")
    misfire_grace_s: float = Field(5.0, gt=0, description="a tick this late still fires "
                                   "normally; older ones were missed (see catch_up)")
    tick_retention_s: float = Field(86_400.0, gt=0, description="how long tick claims are kept")
    max_schedules_per_tenant: int = Field(1000, ge=1)
