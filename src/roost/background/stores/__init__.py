"""`BackgroundStore` backends: memory, SQLite, PostgreSQL (migration 0007), Redis."""
