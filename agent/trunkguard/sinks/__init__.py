"""Sinks: what the shell does with the core's events (log, metrics, MQTT, intent, latency)."""
