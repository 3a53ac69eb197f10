"""Request bodies and response models of the API: what `/openapi.json` describes.

The response models mirror the JSON the routes have always sent, key for key and in the same
order, because the published dAIEdge client (1.2.12) reads some answers by key: `id`,
`status`, `model`, `inventory_id`, `access_token`, `runtimes[engine].parameters`, ...
Values that may be `null` on the wire are declared optional *without* being dropped: no route
serialises with `exclude_none`. Fields that only some answers carry (the `full` view of
`/api/benchmarks/config`) are left unset otherwise and that route serialises with
`exclude_unset`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from vlab_backend.engines.base import check_json_value
from vlab_backend.store.schema import Status

# Bounds of the strings and counts that request bodies carry.
DisplayName = Annotated[str, Field(max_length=200)]
Description = Annotated[str, Field(max_length=10_000)]
Count = Annotated[int, Field(ge=0, le=2**53)]

# -- shared ------------------------------------------------------------------------------------


class ErrorAnswer(BaseModel):
    """Every error: `error` is what the dAIEdge client reads, `detail` FastAPI's convention."""

    error: str
    detail: str


# Every router's refusals, so that the document describes them as sent (the app's handlers
# answer validation errors too with `ErrorAnswer`, not FastAPI's default shape).
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorAnswer, "description": "refused: `error` says why"}}


class Deleted(BaseModel):
    name: str
    deleted: bool


# -- status and accounts -----------------------------------------------------------------------


class ApiStatus(BaseModel):
    status: str = Field(description="`OK` while the API serves requests")
    version: str = Field(description="API version; the dAIEdge client needs it to start "
                                     "with `1.`")
    server: str


class LegacyStatus(BaseModel):
    """For dAIEdge clients 0.2.x."""

    status: str
    version: str


class ResourcesStatus(BaseModel):
    status: str = Field(description="`ok`, in lower case as the resource client expects")


class LoginBody(BaseModel):
    email: str
    password: str


class RefreshBody(BaseModel):
    refresh: str


class TokenBody(BaseModel):
    name: str = ""


class LoginTokens(BaseModel):
    access_token: str
    refresh_token: str


class AccessToken(BaseModel):
    access: str


class Me(BaseModel):
    id: int
    email: str
    is_admin: bool


class NewApiToken(BaseModel):
    """A long-lived token, shown once."""

    id: int
    name: str
    token: str


class ApiTokenInfo(BaseModel):
    id: int
    name: str
    created_at: str
    revoked: bool


class ApiTokenRevoked(BaseModel):
    id: int
    revoked: bool


# -- datasets ----------------------------------------------------------------------------------


class DatasetStored(BaseModel):
    name: str = Field(description="`<uploaded file name>_<sha256>`, the dAIEdge dataset ref")


# -- benchmarks --------------------------------------------------------------------------------


class Submitted(BaseModel):
    id: str
    status: Status


class Progress(BaseModel):
    phase: str
    done: int
    total: int


class BenchmarkView(BaseModel):
    """A benchmark's general information (`device` and `platform` both name its target
    type)."""

    id: str
    status: Status
    message: str
    device: str
    platform: str
    engine: str
    benchmark_type: str
    nb_inference: int
    target_uid: str | None
    model: str = Field(description="the model's file name")
    model_sha256: str
    dataset_name: str | None
    parameters: dict[str, Any]
    public: bool
    progress: Progress
    artifacts: list[str]
    metrics: dict[str, Any] = Field(description=(
        "the flat metrics of the report (units in the names: `_s` seconds, `_bytes`), its "
        "stability (`latency_cv`, `unstable`) and `concurrent_jobs_on_host`: how many other "
        "jobs ran on the same host while this one ran (above 0, they shared its cores and "
        "memory bandwidth; absent where unknown). `/api/results` rows carry the same keys."))
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    name: str = Field(default="", description="the owner's name for the run")
    tags: list[str] = Field(default_factory=list, description="the owner's tags")
    notes: str = Field(default="", description="the owner's notes")


class LabelsBody(BaseModel):
    """New labels of a run: the fields sent replace the stored ones, the others stay.
    Tags: at most 32, each 1 to 64 characters of A-Z a-z 0-9 _ . : - (repeats dropped); a
    name of at most 200 characters, notes of at most 4000."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    tags: list[str] | None = None
    notes: str | None = None


class BenchmarkStatus(BaseModel):
    id: str
    status: Status
    message: str
    progress: Progress


class History(BaseModel):
    """One page of benchmarks, newest first; `count` counts every match."""

    count: int
    page: int
    page_length: int
    results: list[BenchmarkView]


class Canceled(BaseModel):
    id: str
    status: Status


class BenchmarkDeleted(BaseModel):
    id: str
    deleted: bool


class EngineTypes(BaseModel):
    supported_types: list[str]


class ConfiguredEngine(BaseModel):
    version: str
    supported_types: list[str]


class ConfiguredInstance(BaseModel):
    """An instance as its host's target configuration declares it."""

    target_uid: str
    host: str
    memory: dict[str, Any]
    engines: dict[str, ConfiguredEngine]


class DeviceConfig(BaseModel):
    instances: list[str] = Field(description="uids of the enabled instances")
    engines: dict[str, EngineTypes]
    # Only with `full=True`:
    display_name: str | None = None
    description: str | None = None
    instance_details: list[ConfiguredInstance] | None = None


class ParameterSpecView(BaseModel):
    key: str
    type: str
    default: Any
    description: str
    choices: list[Any]


class RuntimeConfig(BaseModel):
    display_name: str
    parameters: list[ParameterSpecView]
    supported_file_extensions: list[str]
    # Only with `full=True`:
    description: str | None = None
    builtin: bool | None = None


class Limits(BaseModel):
    max_model_bytes: int
    max_dataset_bytes: int
    max_nb_inference: int


class BenchmarkConfig(BaseModel):
    """Target types with their enabled instances and engines, every engine's parameters and
    file types, and the submission limits. `full=True` adds each target type's description
    and instance details, and each engine's description."""

    devices: dict[str, DeviceConfig]
    runtimes: dict[str, RuntimeConfig]
    limits: Limits


class Report(BaseModel):
    """`report.json` (or `report_odt.json` for TYPE3) as the target wrote it: the documented
    keys (spelled as published: `nb_infernece`, `enery_efficiency`, ...) and more."""

    model_config = ConfigDict(extra="allow")

    version: Any = None
    date: Any = None
    target: Any = None
    target_id: Any = None
    benchmark_type: Any = None
    model_file_name: Any = None


class LayerTime(BaseModel):
    name: str
    type: str
    mean_s: float
    share: float


class ResultRow(BaseModel):
    """One benchmark as a flat row: these columns, then one per metric of its report."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: Status
    target: str
    target_uid: str | None
    engine: str
    benchmark_type: str
    model: str
    model_sha256: str
    nb_inference_requested: int
    created_at: str | None
    finished_at: str | None
    message: str = Field(description="why it failed, in the target's or engine's words first")
    name: str = Field(description="the owner's name for the run")
    tags: list[str] = Field(description="the owner's tags (a JSON list)")
    notes: str = Field(description="the owner's notes")
    concurrent_jobs_on_host: int | None = Field(
        default=None, description="how many other jobs ran on its host while it ran (see "
        "BenchmarkView.metrics); absent where unknown")


class ResultColumns(BaseModel):
    """The `columns` layout: `pandas.DataFrame(data, columns=columns)`."""

    columns: list[str]
    data: list[list[Any]]


class FLHistory(BaseModel):
    count: int
    page: int
    page_length: int
    results: list[dict[str, Any]]


class FLExperiment(BaseModel):
    """A federated-learning experiment's status, results or definition (free-form JSON)."""

    model_config = ConfigDict(extra="allow")


class FLCanceled(BaseModel):
    """An experiment after a cancel: `canceled`, or the terminal state it had reached."""

    id: str
    status: Status


# -- models ------------------------------------------------------------------------------------


class TensorView(BaseModel):
    name: str
    shape: list[int | str | None]
    dtype: str


class StoredModelView(BaseModel):
    model: str = Field(description="the reference (`model-N`) runs and conversions take")
    filename: str
    format: str
    size: int
    sha256: str
    public: bool
    owned: bool
    platform: Literal["user_models", "public"]
    inputs: list[TensorView]
    outputs: list[TensorView]
    nb_parameters: int | None
    flops: int | None
    opset: int | None
    created_at: str
    lineage: dict[str, Any] | None = Field(
        default=None, description="for a converted model: its source model (`source`, "
        "`source_filename`, `source_format`, `source_sha256`), the `conversion`, the `tool` "
        "and its `options`")


class ModelList(BaseModel):
    count: int
    models: list[StoredModelView]


class Visibility(BaseModel):
    public: bool


class ModelDeleted(BaseModel):
    model: str
    deleted: bool


# -- target instances and their state ----------------------------------------------------------


class OfferView(BaseModel):
    version: str
    supported_types: list[str]


class InstanceView(BaseModel):
    target_uid: str
    target: str
    host: str
    cpuset: list[int]
    memory: dict[str, Any]
    enabled: bool
    engines: dict[str, OfferView]
    state: Literal["busy", "free"]
    benchmark_id: str | None


class TargetOverview(BaseModel):
    target: str
    instances: list[InstanceView]
    engines: list[str]
    queue_length: int = Field(description="benchmarks waiting for an instance of this type")
    busy: int
    free: int


class Overview(BaseModel):
    targets: list[TargetOverview]


# -- resources (the dAIEdge ResourceConfigurator) ----------------------------------------------


class HardwareTypeBody(BaseModel):
    name: str
    display_name: DisplayName = ""
    description: Description = ""


class EngineBody(BaseModel):
    name: str
    display_name: DisplayName = ""
    description: Description = ""
    supported_file_extensions: list[str] = Field(default_factory=list)


class InstanceBody(BaseModel):
    hardware_type_id: str
    engine_ids: list[str] = Field(default_factory=list)
    notes: str = ""
    serial_number: str = ""


class ParameterBody(BaseModel):
    key: str
    display_name: DisplayName = ""
    description: Description = ""
    type: str = "string"
    default_values: Any = ""

    @field_validator("default_values")
    @classmethod
    def _finite_and_shallow(cls, value: Any) -> Any:
        check_json_value(value)
        return value


class HardwareTypeView(BaseModel):
    name: str
    display_name: str
    description: str
    instances: int


class EngineFamilyView(BaseModel):
    name: str
    display_name: str
    description: str
    supported_file_extensions: list[str]
    parameters: list[str]
    builtin: bool


class RegisteredInstance(BaseModel):
    inventory_id: str
    target_uid: str
    hardware_type_id: str
    engine_ids: list[str]
    notes: str
    serial_number: str
    attached: bool = Field(description="whether a host's target configuration declares it")
    host: str


class InstanceDeleted(BaseModel):
    inventory_id: str
    deleted: bool


class EngineConfigEntry(BaseModel):
    version: str
    image: str
    supported_types: list[str]
    devices: list[Any]
    volumes: list[Any]
    env: dict[str, str]


class TargetConfigEntry(BaseModel):
    target_uid: str
    memory: dict[str, Any]
    engines: dict[str, EngineConfigEntry]


class TargetConfiguration(RootModel[dict[str, list[TargetConfigEntry]]]):
    """A host's target configuration, keyed by target type."""


class EngineParameterView(BaseModel):
    id: int
    key: str
    display_name: str
    description: str
    type: str
    default_values: str = Field(description="a string (for enums, the JSON list of choices), "
                                            "as the dAIEdge client formats it")
    engines: list[str]
    builtin: bool


class ParameterDeleted(BaseModel):
    key: str
    deleted: bool


class ParameterLink(BaseModel):
    engine: str
    parameter: str
    attached: bool


# -- hosts -------------------------------------------------------------------------------------


class HostBody(BaseModel):
    name: str
    public_key: str
    endpoint: str = ""
    minimal: bool = False
    targets: list[str] = Field(default_factory=list)


class HostView(BaseModel):
    name: str
    public_key: str
    endpoint: str
    mesh_address: str
    minimal: bool
    targets: list[str]


# -- pipelines on other hosts (/api/jobs, single-job credentials) -------------------------------


class JobSpecView(BaseModel):
    """A job's spec as a remote pipeline sees it: no server paths; `env` is the engine
    offer's environment for the target scripts; `inputs` names what it may download from
    `/api/jobs/{id}/inputs/{name}`."""

    benchmark_id: str
    target: str
    target_uid: str
    engine: str
    benchmark_type: str
    nb_inference: int
    model_filename: str
    dataset_filename: str | None
    parameters: dict[str, Any]
    version_tag: str
    cpuset: list[int]
    step_timeouts_s: dict[str, int]
    env: dict[str, str]
    model_facts: dict[str, Any]
    odt_config: dict[str, Any]
    inputs: list[str]


class JobProgress(BaseModel):
    phase: str
    done: Count
    total: Count
    curves: dict[str, list[float | None]] | None = Field(
        None, description="a training's per-epoch curves so far (`epoch`, `loss_train`, "
                          "`loss_test`, `accuracy_train`, `accuracy_test`, `epoch_time_s`)")


class Acknowledged(BaseModel):
    ok: bool


class SavedOutputs(BaseModel):
    saved: list[str]
