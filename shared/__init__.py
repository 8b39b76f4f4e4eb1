"""Code the four tnrwatch services share: event contracts, Kafka and database plumbing,
settings, telemetry, authentication and HTTP conventions."""
