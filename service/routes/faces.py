from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Query, UploadFile

from service.preprocess import needed_side
from service.routes.common import (
    RegistryDep,
    SettingsDep,
    decode_upload,
    face_models,
    face_out,
    face_photo,
)
from service.schemas import (
    ERROR_RESPONSES,
    EmbeddedFace,
    FaceEmbedResponse,
    FacePair,
    ImageInfo,
    VerifyFacesResponse,
)
from service.tasks.faces import detect_faces, embed_faces, verify
from service.timing import Timing

router = APIRouter(tags=["faces"])

ModelName = Annotated[
    str | None, Query(max_length=64, description="Embedding model; default per /v1/models.")
]
DetectorName = Annotated[
    str | None, Query(max_length=64, description="Face detector; default per /v1/models.")
]


@router.post(
    "/verify-faces",
    response_model=VerifyFacesResponse,
    responses={
        **ERROR_RESPONSES,
        422: {**ERROR_RESPONSES[422], "description": "Bad parameter, or no face (`no_face`)."},
    },
)
async def verify_faces(
    registry: RegistryDep,
    settings: SettingsDep,
    image_a: Annotated[UploadFile, File(description="First photo.")],
    image_b: Annotated[UploadFile, File(description="Second photo.")],
    threshold: Annotated[
        float | None, Query(description="Override the card's threshold (units of `metric`).")
    ] = None,
    metric: Annotated[Literal["cosine", "euclidean"] | None, Query()] = None,
    model: ModelName = None,
    detector: DetectorName = None,
) -> VerifyFacesResponse:
    """Do the largest faces of two photos belong to the same person?"""
    timing = Timing()
    embedder, finder = face_models(registry, model, detector)
    side = needed_side(finder.card)
    decoded = await asyncio.gather(
        decode_upload(image_a, settings, timing, min_side=side),
        decode_upload(image_b, settings, timing, min_side=side),
    )
    a, b = decoded
    result = await verify(finder, embedder, (a, b), timing, metric, threshold)
    return VerifyFacesResponse(
        verified=result.verified,
        distance=round(result.distance, 6),
        similarity=round(result.similarity, 6),
        threshold=result.threshold,
        metric=result.metric,
        model=embedder.name,
        detector=finder.name,
        faces=FacePair(a=face_out(result.faces[0], 0), b=face_out(result.faces[1], 0)),
        faces_found={"a": result.found[0], "b": result.found[1]},
        images={
            "a": ImageInfo(width=a.width, height=a.height),
            "b": ImageInfo(width=b.width, height=b.height),
        },
        timing_ms=timing.report(),
    )


@router.post("/faces/embed", response_model=FaceEmbedResponse, responses=ERROR_RESPONSES)
async def embed(
    registry: RegistryDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="A photo; every face in it is embedded.")],
    score_threshold: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="Detector score; default from its card.")
    ] = None,
    max_faces: Annotated[int, Query(ge=1, le=100)] = 20,
    model: ModelName = None,
    detector: DetectorName = None,
) -> FaceEmbedResponse:
    """Every face in one photo with its box, landmarks and L2-normalised embedding."""
    timing = Timing()
    photo = await face_photo(registry, settings, image, timing, model, detector)
    embedder, finder, decoded = photo.embedder, photo.detector, photo.image
    faces = await detect_faces(finder, decoded, timing, score_threshold)
    faces = faces.take(np.arange(min(len(faces), max_faces)))
    vectors = (
        await embed_faces(embedder, [decoded], [faces], timing)
        if len(faces)
        else np.zeros((0, 0), np.float32)
    )
    return FaceEmbedResponse(
        model=embedder.name,
        model_version=embedder.version,
        detector=finder.name,
        faces=[
            EmbeddedFace(
                **face_out(faces, i).model_dump(),
                embedding=[round(float(v), 6) for v in vectors[i]],
            )
            for i in range(len(faces))
        ],
        image=ImageInfo(width=decoded.width, height=decoded.height),
        timing_ms=timing.report(),
    )
