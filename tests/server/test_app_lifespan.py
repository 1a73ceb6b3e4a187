"""What the app's lifespan does to the process: garbage collector thresholds."""

from __future__ import annotations

import gc

from roost import Runtime, Settings
from roost.server.app import create_app


async def test_start_up_sets_the_configured_gc_thresholds() -> None:
    before = gc.get_threshold()
    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"},
                                               "server": {"gc_thresholds": [12345, 11, 77]}}))
    app = create_app(runtime).api
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == (12345, 11, 77)
    finally:
        gc.set_threshold(*before)


async def test_none_leaves_python_defaults() -> None:
    gc.set_threshold(700, 10, 10)
    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"},
                                               "server": {"gc_thresholds": None}}))
    app = create_app(runtime).api
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == (700, 10, 10)
