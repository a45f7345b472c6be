"""The echo calibration server, which hpload builds: ``server`` is the server itself (``python -m
hpload.servers.echo``), ``launcher`` starts it as a supervised subprocess like every other kind."""
