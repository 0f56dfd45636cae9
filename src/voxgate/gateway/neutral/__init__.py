"""The neutral endpoint, `GET /ws`: protocol v1 between the client and any engine."""
