"""Online recommendations from click events: model, FAISS retrieval, baselines and prequential evaluation.

Kafka-free: a processor feeds :meth:`OnlineRecommender.update` with decoded micro-batches and checkpoints
:meth:`OnlineRecommender.state_dict` together with the consumed offsets.
"""

from models.recs.events import ClickEvent, Deduper, event_weight
from models.recs.index import ItemIndex
from models.recs.online_model import MODEL_NAME, MODEL_VERSION, OnlineRecommender, RecsConfig, UpdateStats

__all__ = [
    "MODEL_NAME",
    "MODEL_VERSION",
    "ClickEvent",
    "Deduper",
    "ItemIndex",
    "OnlineRecommender",
    "RecsConfig",
    "UpdateStats",
    "event_weight",
]
