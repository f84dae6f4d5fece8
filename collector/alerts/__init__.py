"""Alerts: built from policy firings, folded by suppression, stored, and sent to sinks.

alert.build        one alert: a JSON object in the SPEC §10 shape (dotted ECS names)
alert.RaisedAlert  an alert the engine raised, with its suppression key
suppress.Suppressor   folds repeats of an alert for the same group within a window
sinks.*            jsonl, stdout, webhook, syslog (RFC 5424 + CEF), email; never block ingest
dispatch.Dispatcher   the configured sinks, built from collector.yaml
"""
