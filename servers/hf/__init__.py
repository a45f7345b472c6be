"""hpload's transformers wrapper server, which hpload builds: ``launcher`` (``hpload serve hf`` and the supervised
subprocess), ``app`` (HTTP), ``openai_api`` (wire format), ``engine`` (the batching engines), ``metrics`` (its
Prometheus text)."""
