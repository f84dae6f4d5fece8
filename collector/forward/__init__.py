"""Forwarding: every stored event, in ECS or OCSF, streamed to SIEM destinations (`forward:`).

syslog.SyslogTransport   syslog over UDP, TCP or TLS (RFC 5425), octet-counted; alert sinks use it too
"""
