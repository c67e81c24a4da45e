"""The bottom layer: topic registry, event contracts, record types, dead letters and settings.

No Kafka client, no Faust, no model: everything above (models, processors, the runtime, the CLI) may import it.
"""
