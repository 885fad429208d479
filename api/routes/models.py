"""``GET /v1/models``: what this deployment serves and how busy it is."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.schemas import ModelInfo, ModelList, error_responses
from jobs import queries, workers

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, responses=error_responses(401))
def list_models(_: PrincipalDep, session: SessionDep, settings: SettingsDep) -> ModelList:
    """Models served: their resolutions and recommended sampling settings (as their workers report them
    from the model folder, adjusted by the operator), ready workers and queue depth."""
    ready = workers.ready_workers(session, settings.worker_stale_s)
    queues = queries.queue_stats(session)
    data = []
    for model, facts in workers.model_facts(session, settings).items():
        stats = queues.get(model, queries.QueueStats(0, 0.0))
        data.append(
            ModelInfo(
                id=model,
                resolutions=facts.resolutions if facts else [],
                default_resolution=facts.default_resolution if facts else None,
                sampling=facts.sampling if facts else None,
                ready_workers=ready.get(model, 0),
                queue_depth=stats.depth,
                oldest_queued_age_s=round(stats.oldest_age_s, 3),
            )
        )
    return ModelList(data=data)
