"""What the routes share: the app's registry, settings, model repository and face galleries
as dependencies (RegistryDep, SettingsDep, RepositoryDep, GalleriesDep), the query parameters
several routes take (DetectQueryDep for /detect and /segment), reading and decoding an upload,
and the pieces of the detect and face answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, File, Path, Query, Request, UploadFile

from service.detections import Detections
from service.errors import ModelControlDisabled
from service.gallery.service import Galleries
from service.images import DecodedImage, EncodedImage, decode
from service.preprocess import needed_side
from service.repository import NAME, ModelRegistry, ModelRepository
from service.runtime import ModelRuntime
from service.schemas import DetectedFace
from service.settings import Settings
from service.tasks.detect import DetectOptions, resolve_classes
from service.tasks.faces import landmarks_of
from service.tiling import MAX_TILE, MAX_TILES, MIN_TILE, TilingMode, TilingOptions
from service.timing import Timing, in_thread

# Parameters several routes share, declared once so their limits and docs cannot drift apart.
ImageUpload = Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or GIF.")]
ModelName = Annotated[
    str | None,
    Query(
        max_length=80,
        description="Model name, optionally pinned to a version (`name@3`); default per "
        "/v1/models, and the newest ready version.",
    ),
]
IouThreshold = Annotated[
    float,
    Query(
        ge=0.0,
        le=1.0,
        description="NMS drops a box overlapping a better one of its class by more than this IoU.",
    ),
]
ClassFilter = Annotated[
    list[str] | None,
    Query(
        max_length=1000,
        description="Only these classes: label names or ids, repeated or comma-separated "
        "(`classes=dog,cat` or `classes=16&classes=15`).",
    ),
]
TilingParam = Annotated[
    TilingMode,
    Query(
        description="Small objects: also run overlapping tiles of the photo at the model's "
        "input size and merge them with the whole view. auto: only when the photo's longer "
        "side is at least twice the model's input side.",
    ),
]
TileSize = Annotated[
    int | None,
    Query(
        ge=MIN_TILE,
        le=MAX_TILE,
        description="Tile side in photo pixels (default: the model's input side).",
    ),
]
TileOverlap = Annotated[
    float, Query(ge=0.0, le=0.75, description="Fraction of a tile shared with its neighbour.")
]
MaxTiles = Annotated[
    int,
    Query(ge=1, le=MAX_TILES, description="Most tiles per photo; tiles grow to keep within."),
]


ModelPath = Annotated[str, Path(max_length=64, pattern=NAME.pattern, description="Model name.")]


# Dependencies: async, so that FastAPI calls them on the event loop, not in a worker thread.


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository | None = request.app.state.repository
    if repository is None:
        raise ModelControlDisabled("the model repository is not running (server starting)")
    return repository


async def get_galleries(request: Request) -> Galleries:
    galleries: Galleries = request.app.state.galleries
    return galleries


@dataclass(frozen=True)
class DetectQuery:
    """The query parameters /detect and /segment share."""

    score_threshold: float
    iou_threshold: float
    max_detections: int
    classes: list[str] | None  # label names or ids, as sent
    tiling: TilingOptions

    def options(self, labels: Sequence[str]) -> DetectOptions:
        """The thresholds, and the class filter resolved against the model's labels."""
        classes = resolve_classes(self.classes, labels) if self.classes else None
        return DetectOptions(self.score_threshold, self.iou_threshold, self.max_detections, classes)


async def detect_query(
    score_threshold: Annotated[
        float, Query(ge=0.0, le=1.0, description="Drop detections scoring below this.")
    ] = 0.25,
    iou_threshold: IouThreshold = 0.45,
    max_detections: Annotated[
        int, Query(ge=1, le=1000, description="Most detections returned, best first.")
    ] = 100,
    classes: ClassFilter = None,
    tiling: TilingParam = "off",
    tile_size: TileSize = None,
    tile_overlap: TileOverlap = 0.25,
    max_tiles: MaxTiles = 16,
) -> DetectQuery:
    """The DetectQueryDep dependency: its parameters are /detect's and /segment's query."""
    tiles = TilingOptions(tiling, tile_size, tile_overlap, max_tiles)
    return DetectQuery(score_threshold, iou_threshold, max_detections, classes, tiles)


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
GalleriesDep = Annotated[Galleries, Depends(get_galleries)]
DetectQueryDep = Annotated[DetectQuery, Depends(detect_query)]


def detection_fields(found: Detections, i: int) -> dict[str, Any]:
    """Detection i as /detect and /segment show it: label, class id, score, box, rounded."""
    return {
        "label": found.label(i),
        "class_id": int(found.class_id[i]),
        "score": round(float(found.score[i]), 5),
        "box": [round(float(v), 2) for v in found.xyxy[i]],
    }


def face_models(
    registry: ModelRegistry, embedder: str | None, detector: str | None
) -> tuple[ModelRuntime, ModelRuntime]:
    """(face-embed, face-detect) runtimes by name (None: the defaults), leased."""
    return registry.get("face-embed", embedder), registry.get("face-detect", detector)


@dataclass(frozen=True)
class FacePhoto:
    image: DecodedImage  # decoded for the detector (a JPEG draft down to its input side)
    detector: ModelRuntime
    embedder: ModelRuntime


async def face_photo(
    registry: ModelRegistry,
    settings: Settings,
    upload: UploadFile,
    timing: Timing,
    embedder: str | None,
    detector: str | None,
) -> FacePhoto:
    """The face models by name (None: the defaults), leased, and the upload decoded."""
    embed, find = face_models(registry, embedder, detector)
    image = await decode_upload(upload, settings, timing, min_side=needed_side(find.card))
    return FacePhoto(image, find, embed)


def face_out(faces: Detections, i: int) -> DetectedFace:
    """Face i as the responses show it: box, score, landmarks, rounded."""
    return DetectedFace(
        box=[round(float(v), 2) for v in faces.xyxy[i]],
        score=round(float(faces.score[i]), 4),
        landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in landmarks_of(faces)[i]],
    )


async def read_upload(
    upload: UploadFile, settings: Settings, *, min_side: int | None
) -> EncodedImage:
    """Read one form file (already bounded by the body limit); the task decodes it in the
    worker thread that preprocesses it."""
    return EncodedImage(await upload.read(), settings.max_pixels, min_side)


async def decode_upload(
    upload: UploadFile, settings: Settings, timing: Timing, *, min_side: int | None
) -> DecodedImage:
    """Read one form file (already bounded by the body limit) and decode it off the loop."""
    data = await upload.read()
    return await in_thread(
        timing, "decode", lambda: decode(data, max_pixels=settings.max_pixels, min_side=min_side)
    )
