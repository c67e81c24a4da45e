"""The Kafka side: the Faust app, the one agent adapter, delivery, state store and replays, admin/producer
helpers and the embedded broker. Processors never import it; the CLI and demo sit above it.
"""
