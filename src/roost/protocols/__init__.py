"""The ecosystem's protocols over the same runtime: an OpenAI-compatible API
(`openai_api.py`, `responses.py`), Roost agents as an MCP server (`mcp_server.py`) and
over A2A (`a2a.py`). Each translates to the `Runtime`'s own calls; none has an engine or a
store of its own. The MCP and A2A adapters need the `roost[mcp]` / `roost[a2a]` extras and
are imported only when mounted.
"""
