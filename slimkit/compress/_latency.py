"""Moved to ``slimkit.compress.measure``; this name stays for older imports."""
from slimkit.compress.measure import interleaved_latency  # noqa: F401
