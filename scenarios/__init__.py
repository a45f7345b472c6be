"""hpload.scenarios."""
