"""Python SDK of the MetaNet one-shot concept-learning server.

>>> from metanet_client import Client
>>> task = Client("http://127.0.0.1:8000").task("demo")
>>> task.add("cat", "cat.png")
>>> task.classify("query.png").labels
"""

from ._calls import Limits
from ._client import AsyncClient, AsyncTask, Client, Task
from ._errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InvalidRequestError,
    MetaNetError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
)
from ._images import Image, Images
from ._models import (
    ClassifyResult,
    ExportedExample,
    ExportedModel,
    ImportResult,
    LabelScore,
    Prediction,
    SupportResult,
    TaskExport,
    TaskInfo,
)
from ._version import __version__

__all__ = [
    "__version__",
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AsyncTask",
    "AuthenticationError",
    "ClassifyResult",
    "Client",
    "ExportedExample",
    "ExportedModel",
    "Image",
    "Images",
    "ImportResult",
    "InvalidRequestError",
    "LabelScore",
    "Limits",
    "MetaNetError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Prediction",
    "QuotaExceededError",
    "RateLimitError",
    "ServerError",
    "SupportResult",
    "Task",
    "TaskExport",
    "TaskInfo",
]
