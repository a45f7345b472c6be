"""hpload.servers."""
