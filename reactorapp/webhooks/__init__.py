"""Webhooks: messages that match a rule are pushed to an HTTP endpoint.

`rules` defines and checks a rule, `signing` and `payload` shape one request,
`dispatcher` sends it with retries, `outbox` keeps deliveries (durably for
QoS 1 and 2) until they get through, `service` runs it all, `api` manages
rules over HTTP.
"""
