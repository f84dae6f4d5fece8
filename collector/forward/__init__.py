"""Forwarding: every stored event, in ECS or OCSF, streamed to SIEM destinations (`forward:`).

listener.Forwarding      one worker per `forward:` destination (in the forward process), their metrics
worker.ForwardWorker     reads stored events after its cursors, delivers, then moves the cursors
process.ForwardProcess   runs the workers in a process of its own, woken after each commit
formatted.Formatter      stored rows decoded and laid out in JSON, big batches with helper processes
formatted.Formatted      events decoded once and laid out once per format, for every destination
destinations.*           Elasticsearch/OpenSearch `_bulk`, Splunk HEC, syslog
syslog.SyslogTransport   syslog over UDP, TCP or TLS (RFC 5425), octet-counted; alert sinks use it too
errors.DeliveryError     a destination did not take a batch (the metrics' `reason`)
"""
