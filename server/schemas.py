"""HTTP request and response bodies. Every request model forbids unknown fields so a typo
(`beamsize`) is a 422 naming the field instead of a silently ignored option; every response model is
what the OpenAPI document promises, which is what schemathesis checks."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ClassifyJSONRequest",
    "ClassifyResponse",
    "Prediction",
    "LabelScore",
    "Explanation",
    "TranslateRequest",
    "TranslateResponse",
    "Translation",
    "ErrorResponse",
    "ModelInfo",
    "ModelsResponse",
    "Health",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClassifyJSONRequest(_Strict):
    """JSON form of /classify: images as base64 strings (standard alphabet, padding optional)."""

    images: list[str] = Field(..., min_length=1, description="base64-encoded PNG/JPEG/WebP/BMP files")
    top_k: int = Field(5, ge=1, description="how many classes to list per image (at most the label count)")
    explain: bool = Field(False, description="add each image's attention rollout over the patch grid")
    model: Optional[str] = Field(None, max_length=200, description="model name (GET /v1/models); default: the "
                                                                   "server's default classifier")


class LabelScore(BaseModel):
    label: str
    score: float


class Explanation(BaseModel):
    """Where the model looked: attention rollout through the MultiMax attention of every block."""

    grid: list[int] = Field(..., description="[rows, cols] of the patch grid")
    attention: list[list[float]] = Field(..., description="rollout weight per patch, rows x cols, sums to 1")
    sparsity: float = Field(..., description="fraction of attention weights below `threshold`")
    zero_fraction: float = Field(..., description="fraction of attention weights exactly 0")
    threshold: float


class Prediction(BaseModel):
    label: str
    score: float
    top_k: list[LabelScore]
    explanation: Optional[Explanation] = None


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[Prediction] = Field(..., description="one per image, in the order sent")


class TranslateRequest(_Strict):
    texts: list[str] = Field(..., min_length=1, description="source sentences")
    beam_size: Optional[int] = Field(None, ge=1, description="1 = greedy (default: the model's setting)")
    max_length: Optional[int] = Field(None, ge=1, description="most target tokens per text (default: model's)")
    model: Optional[str] = Field(None, max_length=200, description="model name (GET /v1/models); default: the "
                                                                   "server's default translator")


class Translation(BaseModel):
    text: str
    score: float = Field(..., description="sum of MultiMax log-probabilities (length-penalised for beams)")


class TranslateResponse(BaseModel):
    model: str
    translations: list[Translation] = Field(..., description="one per text, in the order sent")


class ErrorResponse(BaseModel):
    """Every error: a stable machine-readable `code`, a human `detail`, and the request id to quote."""

    detail: str
    code: str
    request_id: Optional[str] = None
    errors: Optional[list[dict]] = Field(None, description="per-field validation errors (422)")


class ModelInfo(BaseModel):
    """A model the server knows. Loaded models carry everything; the others name, task (when the
    directory says), source, state and the reason."""

    name: str
    task: Optional[str] = None
    state: str = Field(..., description="loading | ready | failed | unloading | unloaded")
    reason: Optional[str] = Field(None, description="why a model failed to load")
    default: bool = Field(False, description="the model its endpoint uses when a request names none")
    backend: Optional[str] = None
    device: Optional[str] = None
    source: str = Field(..., description="directory the model comes from")
    sha256: Optional[str] = Field(None, description="sha256 of the source checkpoint's weights")
    parameters: Optional[int] = None
    max_batch_size: Optional[int] = None
    max_queue_delay_ms: Optional[float] = None
    max_queue_size: Optional[int] = None
    labels: Optional[list[str]] = None
    extra: dict = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    models: dict[str, str] = Field(default_factory=dict)
