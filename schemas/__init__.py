"""Request, records, row schemas and errors. No I/O here."""

from augflow.schemas.errors import (
    AugflowError,
    CommitConflictError,
    ExecutionError,
    InputError,
    ModelLoadError,
    QualityGateError,
    RegistryError,
    RequestError,
    StorageError,
    VersionNotFoundError,
)
from augflow.schemas.records import Plan, ShardResult, ShardSpec, SourceItem, WorkItem, iter_work_items
from augflow.schemas.request import (
    AugmentRequest,
    DenoiseOp,
    ExecutionSpec,
    GenerateOp,
    Img2ImgOp,
    ModelSpec,
    QualityThresholds,
    UpscaleOp,
    load_request,
    parse_request,
)
from augflow.schemas.rows import METRIC_COLUMNS, QUARANTINE_SCHEMA, ROW_SCHEMA

__all__ = [
    "AugflowError", "AugmentRequest", "CommitConflictError", "DenoiseOp", "ExecutionError",
    "ExecutionSpec", "GenerateOp", "Img2ImgOp", "InputError", "METRIC_COLUMNS", "ModelLoadError",
    "ModelSpec", "Plan", "QUARANTINE_SCHEMA", "QualityGateError", "QualityThresholds", "ROW_SCHEMA",
    "RegistryError", "RequestError", "ShardResult", "ShardSpec", "SourceItem", "StorageError",
    "UpscaleOp", "VersionNotFoundError", "WorkItem", "iter_work_items", "load_request", "parse_request",
]
