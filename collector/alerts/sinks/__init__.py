"""Alert sinks: each one a worker thread behind a bounded queue, so sending never blocks ingest.

base.QueuedSink       the queue, the worker, retries with exponential backoff and jitter
jsonl.JsonlSink       one JSON object a line, appended and flushed to a file
stdout.StdoutSink     one JSON object a line on standard output
webhook.WebhookSink   HTTP POST of the JSON object
syslog.SyslogSink     RFC 5424 with a CEF payload, over UDP or TCP (RFC 6587 octet counting)
email.EmailSink       a plain-text mail over SMTP (STARTTLS, login from a password file)
"""
