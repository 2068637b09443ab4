"""The HTTP front end: JSON API, Server-Sent Events, MQTT over WebSocket,
Prometheus metrics and the dashboard, all twisted.web resources on the
hub's reactor. `reactorapp.web.site.make_site` assembles them."""
