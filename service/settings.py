"""Service configuration: one validated object, read once from the environment (prefix IIS_)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.tenancy import Principal, principals


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# The default model set (python -m scripts build-models): a user's own model never silently
# takes over a task's default just because its name sorts first.
BUILT_IN_DEFAULTS = (
    "mobilenet_v2-imagenet",
    "yolov3-tiny-coco",
    "shapes-maskrcnn-mobilenet_v2",
    "yunet-2023mar",
    "sface-2021dec",
)


class Settings(BaseSettings):
    """Every knob of the service. Preprocessing and labels live in model cards, not here."""

    model_config = SettingsConfigDict(env_prefix="IIS_", env_file=".env", extra="ignore")

    models_dir: Path = Field(
        Path("models"), description="Folder of <name>/model.onnx + model.json."
    )
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="auto: TensorRT > CUDA > CPU, whichever really starts."
    )
    device_id: int = Field(0, ge=0, description="GPU index for CUDA and TensorRT.")
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run through ORT IO binding; auto: on when CUDA or TensorRT is active.",
    )
    trt_fp16: bool = Field(False, description="Let TensorRT build FP16 engines.")
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC", description="How the CUDA provider picks cuDNN convolution kernels."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Per request body.")
    max_pixels: int = Field(40_000_000, gt=0, description="width x height, checked from header.")
    max_batch: int = Field(8, ge=1, le=256, description="Micro-batch size per model.")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="How long a batch waits to fill.")
    max_queue: int = Field(64, ge=1, description="Requests waiting per model before 429.")
    batch_concurrency: int = Field(
        1, ge=1, le=16, description="Batches of one model that may run at once."
    )
    intra_op_threads: int = Field(
        default_factory=_cpu_count, ge=1, description="ORT threads per session run."
    )
    inter_op_threads: int = Field(1, ge=1)
    ort_spinning: bool = Field(
        False,
        description="Let ORT's idle intra-op threads spin-wait for the next run (lower latency "
        "on dedicated cores; steals CPU from decoding and HTTP when cores are few).",
    )
    warmup_runs: int = Field(2, ge=0, le=100)
    default_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(BUILT_IN_DEFAULTS),
        description="Comma list of model names preferred as their task's default; a task with "
        "none of them installed takes its first card in name order.",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Longest a request may wait for its model (503 after)."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma list of accepted API keys; empty: no auth."
    )
    api_keys_file: Path | None = Field(
        None,
        description="File with one API key per line: `<key> [<tenant> [read-only]]` (see "
        "service/tenancy.py); a bare key belongs to tenant `default`.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma list of allowed browser origins; empty: off."
    )
    model_control: Literal["none", "poll", "explicit"] = Field(
        "explicit",
        description="As Triton's modes. All: every model in models_dir loads at start. explicit: "
        "/v2/repository load and unload change the set at run time. poll: also rescans "
        "models_dir every poll_interval_s and loads, reloads or unloads what changed. none: "
        "the set is fixed at start.",
    )
    poll_interval_s: float = Field(2.0, ge=0.1, le=3600, description="poll mode's rescan period.")
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma list of keys that may change the model repository (and infer). With "
        "any key configured, inference keys cannot load or unload models.",
    )
    expected_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma list of models still being built: /readyz lists them as pending "
        "until they are ready (scripts/serve.sh sets it while the segmenter trains).",
    )
    background_load: bool = Field(
        True, description="Serve /healthz while models load; false: load before serving."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the face-gallery database, e.g. "
        "postgresql+psycopg://user:pass@host/db (what replicas share); unset: SQLite in data_dir.",
    )
    data_dir: Path = Field(
        Path("data"), description="Where the default SQLite gallery database (gallery.db) lives."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    @field_validator(
        "default_models",
        "api_keys",
        "admin_api_keys",
        "expected_models",
        "cors_origins",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def accepted_keys(self) -> list[str]:
        """api_keys plus the keys of api_keys_file (read once, at start-up)."""
        return list(self.key_principals(admin=False))

    def key_principals(self, admin: bool = True) -> dict[str, Principal]:
        """Every accepted key (admin keys too unless admin=False) -> its tenant and scope."""
        admin_keys = self.admin_api_keys if admin else []
        return principals(self.api_keys, self.api_keys_file, admin_keys)


@lru_cache
def get_settings() -> Settings:
    return Settings()
