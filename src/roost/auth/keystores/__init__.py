"""`KeyStore` backends beside each session store: SQLite, PostgreSQL, Redis (memory is
`roost.auth.keys.MemoryKeyStore`). Each keeps its own connection; none edits the session
store's tables."""
