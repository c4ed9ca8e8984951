"""events: the shared language of both engines — event schema (Arrow), scenarios, the DuckDB store."""
