"""hpload.tui."""
