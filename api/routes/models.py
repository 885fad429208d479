"""``GET /v1/models``: what this deployment serves and how busy it is."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, SettingsDep
from api.schemas import ModelInfo, ModelList
from jobs import lifecycle

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep) -> ModelList:
    """Models served, their resolutions, ready workers and queue depth."""
    ready = lifecycle.ready_workers(session, settings.worker_stale_s)
    queues = lifecycle.queue_stats(session)
    data = []
    for model in settings.models:
        stats = queues.get(model, lifecycle.QueueStats(0, 0.0))
        resolutions = settings.resolutions(model)
        data.append(
            ModelInfo(
                id=model,
                resolutions=resolutions,
                default_resolution=resolutions[0],
                ready_workers=ready.get(model, 0),
                queue_depth=stats.depth,
                oldest_queued_age_s=round(stats.oldest_age_s, 3),
            )
        )
    return ModelList(data=data)
