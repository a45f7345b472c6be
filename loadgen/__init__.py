"""hpload.loadgen."""
