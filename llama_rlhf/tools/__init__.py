"""Command-line helpers that prepare inputs for a run (not used by the pipeline itself)."""
