"""`[webhooks]`: signed deliveries of run outcomes, retried from a durable outbox."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WebhooksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: bool = Field(True, description="this instance delivers (any instance may)")
    allow_private: bool = Field(False, description="allow receivers on private, link-local "
                                "and reserved addresses (SSRF protection when false)")
    allow_loopback: bool = Field(False, description="allow receivers on 127.0.0.0/8, ::1 and "
                                 "localhost (tests, development)")
    timeout_s: float = Field(10.0, gt=0, le=120, description="one delivery attempt, all in")
    retry_for_s: float = Field(86_400.0, gt=0, description="give up retrying this long after "
                               "the first attempt")
    max_attempts: int = Field(30, ge=1, le=1000)
    backoff_base_s: float = Field(1.0, gt=0, description="delay after the first failure; "
                                  "doubles each time, with jitter")
    backoff_max_s: float = Field(3600.0, gt=0, description="longest delay between attempts")
    concurrency: int = Field(32, ge=1, description="deliveries in flight on this instance")
    per_tenant_concurrency: int = Field(4, ge=1, description="deliveries of one tenant in "
                                        "flight on this instance (one tenant's slow receiver "
                                        "cannot take every slot)")
    lease_s: float = Field(60.0, gt=0, description="how long a claimed delivery is this "
                           "instance's before another may take it (longer than timeout_s)")
    poll_interval_s: float = Field(1.0, gt=0, description="how often the outbox is read")
    watch_interval_s: float = Field(15.0, gt=0, description="how often a run with a webhook "
                                    "that has not ended is looked at again (its end on any "
                                    "instance wakes it sooner)")
    max_payload_bytes: int = Field(256 * 1024, ge=1024, description="the run's output is cut "
                                   "to keep a delivery's body under this")

    @model_validator(mode="after")
    def _lease_covers_attempt(self) -> WebhooksConfig:
        if self.lease_s <= self.timeout_s:
            raise ValueError("lease_s must be longer than timeout_s")
        return self
