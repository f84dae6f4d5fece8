"""Transport security of the agents' port: the collector's certificate authority (`pki`), mTLS
credentials and the per-stream agent checks (`mtls`), and the one place that turns the config's
`tls` section into server credentials and interceptors (`credentials`)."""
