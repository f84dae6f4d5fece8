"""Alerts: built from policy firings, folded by suppression, stored, and sent to sinks.

alert.Alert        one alert in the SPEC §10 JSON shape (dotted ECS names)
suppress.Suppressor   folds repeats of an alert for the same group within a window
sinks.*            jsonl, stdout, webhook, syslog (RFC 5424 + CEF), email; never block ingest
dispatch.Dispatcher   the configured sinks, built from collector.yaml
"""
