"""Server settings: every knob has a default, an `MMSERVE_*` environment variable and (for the common
ones) a `mmserve serve` flag. One pydantic-settings class so the CLI, the tests and a container
orchestrator all configure the server the same way and invalid values fail at start-up, not mid-request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

if TYPE_CHECKING:
    from exporters.onnx.runtime import ThreadPolicy

__all__ = ["ServerSettings", "Limits", "REPO_ROOT", "default_model_dir", "available_cpus"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or `taskset` narrows;
    os.cpu_count() counts the whole machine): what thread and process defaults are sized by."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_model_dir(name: str) -> Path:
    """Where a bundled model lives: `models/<name>` next to the package (source checkout / editable)."""
    return REPO_ROOT / "models" / name


class Limits(BaseSettings):
    """What one request may ask for. Checked before anything is queued, so a hostile request costs a
    header parse, never a model run. Env: `MMSERVE_LIMIT_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="MMSERVE_LIMIT_", extra="forbid")

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="whole request body (413 above)")
    max_image_bytes: int = Field(4 * 1024 * 1024, ge=64, description="one encoded image (413 above)")
    max_image_pixels: int = Field(16_000_000, ge=1, description="width x height from the header (413 above)")
    max_images: int = Field(64, ge=1, description="images per /classify request")
    max_texts: int = Field(64, ge=1, description="texts per /translate request")
    max_text_chars: int = Field(1000, ge=1, description="characters per text")
    max_source_tokens: int = Field(128, ge=4, description="source tokens per text after tokenisation")
    max_beam_size: int = Field(8, ge=1)
    max_output_tokens: int = Field(128, ge=1, description="upper bound for a request's max_length")


class ServerSettings(BaseSettings):
    """The whole server configuration. Env prefix `MMSERVE_` (e.g. `MMSERVE_MAX_BATCH_SIZE=32`)."""

    model_config = SettingsConfigDict(env_prefix="MMSERVE_", extra="forbid", env_nested_delimiter="__")

    # --- what to serve
    classifier: Optional[Path] = Field(None, description="model dir (torch) or ONNX export dir (onnxruntime)")
    translator: Optional[Path] = None
    models: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="more model dirs / ONNX export dirs, any task (comma-separated)")
    model_repository: Optional[Path] = Field(
        None, description="a directory whose every subdirectory is a model (Triton's model repository)")
    default_classifier: Optional[str] = Field(None, description="model /classify uses when a request names "
                                                                 "none [--classifier's, else the first classifier]")
    default_translator: Optional[str] = Field(None, description="model /translate uses when a request names none")
    backend: str = Field("onnxruntime", description="torch | onnxruntime | native (translators) | any registered backend")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    onnx_cache_dir: Path = Field(REPO_ROOT / "build" / "onnx-cache",
                                 description="where checkpoints are exported for onnxruntime, keyed by sha256")
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="modules imported at start-up (comma-separated); each may call register_backend()",
    )

    # --- network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: Optional[SecretStr] = Field(None, description="if set, inference routes need 'Authorization: Bearer <key>'")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="empty = CORS off")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False

    # --- batching (Triton's dynamic_batching block)
    max_batch_size: int = Field(32, ge=1, description="items (images, decoder rows) per model run")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000, description="wait this long to fill a batch")
    max_queue_size: int = Field(1024, ge=1, description="items waiting per model; more -> 503 + Retry-After")
    queue_timeout_s: float = Field(30.0, gt=0, description="an item not started by then fails with 503")
    request_timeout_s: float = Field(120.0, gt=0, description="a request not finished by then fails with 504")
    max_batch_tokens: int = Field(8192, ge=16, description="translator: sum of rows x (source + target) tokens")
    translate_max_rows: int = Field(64, ge=1, description="translator: decoder rows in flight (beams count)")

    # --- processes (see server/supervisor.py)
    frontends: Optional[int] = Field(None, ge=0, le=64,
                                     description="HTTP frontend processes in front of one engine process; 0 = "
                                                 "everything in one process; unset = one per two cores (1..8)")

    # --- threads (2-core machines: keep the sum near the core count)
    workers: int = Field(2, ge=1, le=64, description="threads decoding uploads / tokenising texts")
    preprocess_processes: int = Field(0, ge=0, le=64, description="worker processes decoding + preprocessing "
                                                                   "images (0 = on the threads above)")
    intra_op_threads: int = Field(1, ge=0, description="threads per model (`--threads`), torch and onnxruntime "
                                                        "(0 = their defaults); 1 suits small models on few "
                                                        "cores. A translator splits them into decode_lanes")
    decode_lanes: Optional[int] = Field(
        None, ge=1, le=64,
        description="translator: decode loops side by side, each its own running batch, sharing "
                    "intra_op_threads (unset = the thread policy: on onnxruntime N threads = N lanes of 1 "
                    "intra-op thread; one lane with every thread on other backends; 1 = one loop with N "
                    "intra-op threads)")
    warmup: bool = True
    exit_on_load_error: bool = Field(True, description="mmserve serve exits (status 2) when a model fails to "
                                                       "load, like Triton's --exit-on-error; else stays up, unready")
    shutdown_grace_s: float = Field(30.0, ge=0, description="drain in-flight requests this long on shutdown")

    limits: Limits = Field(default_factory=Limits)

    def translator_threads(self) -> "ThreadPolicy":
        """How a translator uses `intra_op_threads`: `workers` decode lanes (continuous.py) of
        `intra_op_threads` each. The onnxruntime backend follows `exporters.onnx.runtime.thread_policy`
        (N threads = N lanes of one thread: two loops of one thread decoded the bundled translator at
        1.6-1.9x of one loop, two intra-op threads in one loop at 0.8-1.0x). Other backends get one
        lane with every thread unless `decode_lanes` asks for more: lanes call the stepper from several
        threads at once, which only onnxruntime's, torch's and the native translator's steppers are known
        to allow; the native one follows the onnxruntime policy (its calls release the GIL)."""
        from exporters.onnx.runtime import thread_policy

        lanes = self.decode_lanes
        if lanes is None and self.backend not in ("onnxruntime", "native"):
            lanes = 1
        return thread_policy(self.backend, self.intra_op_threads, lanes)

    @field_validator("plugins", "cors_origins", "models", mode="before")
    @classmethod
    def _split_csv(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", mode="after")
    @classmethod
    def _empty_key_is_none(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _check(self) -> "ServerSettings":
        if self.classifier is None and self.translator is None and not self.models and self.model_repository is None:
            raise ValueError("nothing to serve: give --classifier, --translator, --model or --model-repository")
        biggest = max(self.limits.max_images, self.limits.max_texts)
        if biggest > self.max_queue_size:
            # Otherwise a request of the maximum size could never be queued, and 503 + Retry-After
            # would tell the client to retry something that can never succeed.
            raise ValueError(f"max_queue_size ({self.max_queue_size}) must be at least the largest request "
                             f"(max images/texts: {biggest})")
        return self
