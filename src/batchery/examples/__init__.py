"""Worked examples that ship with batchery; each is served with `batchery serve <name>`."""
