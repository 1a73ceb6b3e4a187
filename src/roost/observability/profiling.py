"""Sample the live event loop for a few seconds and report where its time goes (pyinstrument).

    report = await profile(10)                          # text call tree
    report = await profile(5, format="speedscope")     # JSON for https://www.speedscope.app

The profiler samples the *thread* running the loop, so every task shows up — the request
handlers, the runs, the store — not just the caller (pyinstrument's async mode would follow
only the calling task, which here just sleeps). One profile at a time per process: the
sampler is per thread and two would distort each other; a second caller gets `Conflict`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from roost.errors import ConfigError, Conflict, InvalidInput

ProfileFormat = Literal["text", "speedscope", "html"]

MIN_SECONDS = 1.0
MAX_SECONDS = 60.0

# Process-wide on purpose: the thing guarded (the sampler on the loop's thread) is.
_running = False


async def profile(
    seconds: float, *, interval: float = 0.001, format: ProfileFormat = "text"
) -> str:
    """Profile the running event loop for `seconds` (1-60) and render the report.

    Raises `InvalidInput` for bounds, `Conflict` when a profile is already running. Cancelling
    the caller stops the profiler cleanly.
    """
    global _running
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise InvalidInput(f"seconds must be within {MIN_SECONDS:g}-{MAX_SECONDS:g}",
                           field="seconds")
    if not 0.0001 <= interval <= 0.1:
        raise InvalidInput("interval must be within 0.0001-0.1 s", field="interval")
    if format not in ("text", "speedscope", "html"):
        raise InvalidInput("format must be text, speedscope or html", field="format")
    try:
        from pyinstrument import Profiler
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("profiling needs pyinstrument: pip install 'roost[observability]'",
                          [("observability", str(exc))]) from exc
    if _running:
        raise Conflict("a profile is already running; try again when it ends")
    _running = True
    try:
        profiler = Profiler(interval=interval, async_mode="disabled")
        profiler.start()
        try:
            await asyncio.sleep(seconds)
        finally:
            session = profiler.stop()
    finally:
        _running = False
    # Rendering a long session takes a while: keep it off the loop.
    return await asyncio.to_thread(_render, session, format)


def _render(session: Any, format: ProfileFormat) -> str:
    from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer, SpeedscopeRenderer

    renderer: Any
    if format == "speedscope":
        renderer = SpeedscopeRenderer()
    elif format == "html":
        renderer = HTMLRenderer()
    else:
        renderer = ConsoleRenderer(unicode=True, color=False, short_mode=False)
    return str(renderer.render(session))
