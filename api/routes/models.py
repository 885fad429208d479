"""``GET /v1/models``: what this deployment serves and how busy it is."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from api.deps import PrincipalDep, SessionDep, SettingsDep, StorageDep
from api.errors import NotFound
from api.schemas import ModelExample, ModelInfo, ModelList, error_responses
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
                description=facts.description if facts else "",
                examples=[
                    ModelExample(instruction=e["instruction"], image_url=f"/v1/models/{model}/examples/{i}")
                    for i, e in enumerate(facts.examples if facts else [])
                ],
                ready_workers=ready.get(model, 0),
                queue_depth=stats.depth,
                oldest_queued_age_s=round(stats.oldest_age_s, 3),
            )
        )
    return ModelList(data=data)


@router.get(
    "/models/{model}/examples/{index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the example's source image"},
        **error_responses(404),
    },
)
def get_model_example(
    _: PrincipalDep,
    model: str,
    index: Annotated[int, Path(ge=0)],
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> Response:
    """The source image of one of the model's examples (bytes from this origin, for the web page)."""
    facts = workers.model_facts(session, settings).get(model)
    if facts is None or index >= len(facts.examples):
        raise NotFound(f"model {model} has no example {index}")
    example = facts.examples[index]
    try:
        data = storage.get(example["image_key"])
    except KeyError:
        raise NotFound(f"the image of example {index} of {model} is gone") from None
    return Response(
        data, media_type=example["content_type"], headers={"Cache-Control": "public, max-age=3600"}
    )
