"""`GET /v1/runs`: a tenant's runs, newest first by (created_at, id), one page at a time.

The cursor is opaque (the (created_at, id) of the page's last run, as session listings
use). Each backend lists by `created_at < until`; a page after a cursor asks for the runs up
to and including the cursor's time and drops those at or after the cursor, asking again for
more when runs sharing that exact time filled the answer — so no run is skipped or repeated.
"""

from __future__ import annotations

import math

from roost.errors import InvalidInput
from roost.sessions import codec
from roost.sessions.records import Page, RunRecord
from roost.sessions.store import MAX_LIST_RUNS, Store

#: the largest page `GET /v1/runs` serves
MAX_PAGE = 200


async def list_runs_page(store: Store, tenant: str, *, status: str | None = None,
                         agent: str | None = None, session_id: str | None = None,
                         cursor: str | None = None, limit: int = 50) -> Page:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    after = codec.decode_cursor(cursor) if cursor is not None else None
    until = math.nextafter(after[0], math.inf) if after is not None else None
    ask = limit + 1
    while True:
        found = await store.list_runs(tenant, session_id=session_id, status=status,
                                      agent=agent, until=until, limit=ask)
        runs: list[RunRecord] = [
            r for r in found if after is None or (r.created_at, r.id) < after]
        if len(runs) > limit or len(found) < ask or ask >= MAX_LIST_RUNS:
            break
        ask = min(MAX_LIST_RUNS, ask * 4)  # runs at the cursor's very time filled the answer
    items = runs[:limit]
    next_cursor = (codec.encode_cursor(items[-1].created_at, items[-1].id)
                   if len(runs) > limit else None)
    return Page(items=items, next_cursor=next_cursor)
