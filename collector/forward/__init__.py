"""Forwarding: every stored event, in ECS or OCSF, streamed to SIEM destinations (`forward:`).

listener.Forwarding      the collector seam: one worker per `forward:` destination, woken on each commit
worker.ForwardWorker     reads stored events after its cursors, delivers, then moves the cursors
destinations.*           Elasticsearch/OpenSearch `_bulk`, Splunk HEC, syslog
syslog.SyslogTransport   syslog over UDP, TCP or TLS (RFC 5425), octet-counted; alert sinks use it too
errors.DeliveryError     a destination did not take a batch (the metrics' `reason`)
"""
