"""The real engine beside simkv: a transformers model, LMCache's standalone engine (CPU and
disk backends) behind a connector of our own, and a GPU prefix cache, all configured by the
same scenario file the simulator reads."""
