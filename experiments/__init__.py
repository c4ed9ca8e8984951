"""experiments: user-facing commands (CLI), sweeps, validation, reports."""
