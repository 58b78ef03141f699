"""The work protocol's types: they survive the trip between processes, and every kind of ServiceError
has its HTTP status in the one table."""

from __future__ import annotations

import dataclasses
import pickle
import types
import typing

import numpy as np
import pytest
from pydantic import BaseModel

from server import protocol, schemas
from server.errors import HTTP_STATUS, error_responses


def service_errors() -> list[type[protocol.ServiceError]]:
    found, todo = [], [protocol.ServiceError]
    while todo:
        kind = todo.pop()
        found += kind.__subclasses__()
        todo += kind.__subclasses__()
    return found


def test_every_service_error_has_a_status_and_is_listed_in_the_openapi_answers() -> None:
    kinds = service_errors()
    assert len(kinds) >= 13
    missing = [kind.__name__ for kind in kinds if kind not in HTTP_STATUS]
    assert not missing, f"add these to server/errors.py HTTP_STATUS: {missing}"
    described = error_responses(*kinds)
    for kind in kinds:
        assert f"`{kind.code}`" in described[HTTP_STATUS[kind]]["description"]


@pytest.mark.parametrize("kind", service_errors(), ids=lambda kind: kind.__name__)
def test_service_errors_survive_pickling(kind: type[protocol.ServiceError]) -> None:
    error = pickle.loads(pickle.dumps(kind("task 'x': something")))
    assert type(error) is kind and error.message == "task 'x': something" and error.code == kind.code


def test_work_and_results_are_frozen_and_survive_pickling() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    score = protocol.LabelScore("a", 0.75)
    for value in [
        protocol.SupportWork("tenant", "task", images, ("a", "b")),
        protocol.ClassifyWork("tenant", "task", images, top_k=3),
        protocol.SupportResult(2, 4, ("a", "b")),
        protocol.ClassifyResult(2, 0.3, (protocol.Prediction("a", 0.75, True, 0.1, (score,)),)),
    ]:
        copy = pickle.loads(pickle.dumps(value))
        assert dataclasses.astuple(copy)[:2] == dataclasses.astuple(value)[:2]
        with pytest.raises(dataclasses.FrozenInstanceError):
            copy.version = 0  # type: ignore[misc]
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(protocol.ClassifyWork("t", "x", images))).images, images
    )


def test_a_classify_result_becomes_the_http_answer_field_for_field() -> None:
    """``ClassifyResponse.of`` reads the worker's dataclasses directly; it must say what the dataclasses say,
    rejected predictions (label None) and a missing threshold included."""
    from server.schemas import ClassifyResponse

    ranked = (protocol.LabelScore("a", 0.75), protocol.LabelScore("b", 0.25))
    result = protocol.ClassifyResult(
        3,
        None,
        (
            protocol.Prediction("a", 0.75, True, 0.125, ranked),
            protocol.Prediction(None, 0.5, False, 0.5, ranked),
        ),
    )
    answer = ClassifyResponse.of("task", result)
    assert answer.model_dump() == {"task_id": "task", **dataclasses.asdict(result)} | {
        "predictions": [
            dataclasses.asdict(p) | {"top_k": [dataclasses.asdict(r) for r in ranked]}
            for p in result.predictions
        ]
    }


def _shape(annotation: object) -> object:
    """A type as the two result types can agree on: sequences alike, result classes by name."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (tuple, list):
        return ("sequence", _shape(args[0]))
    if origin in (typing.Union, types.UnionType):
        return frozenset(_shape(arg) for arg in args)
    if isinstance(annotation, type) and (
        dataclasses.is_dataclass(annotation) or issubclass(annotation, BaseModel)
    ):
        return annotation.__name__
    return annotation


@pytest.mark.parametrize(
    ("internal", "http"),
    [
        (protocol.LabelScore, schemas.LabelScore),
        (protocol.Prediction, schemas.Prediction),
        (protocol.ClassifyResult, schemas.ClassifyResponse),
        (protocol.SupportResult, schemas.SupportResponse),
    ],
)
def test_each_http_result_has_the_fields_of_the_workers_result(internal: type, http: type[BaseModel]) -> None:
    """The responses are read from the workers' results field by name (``ClassifyResponse.of``): the
    HTTP schema must name every field of the internal result, with the same type (and the task id)."""
    hints = typing.get_type_hints(internal)
    header_fields = {"replayed"}  # SupportResult.replayed is answered as the Idempotent-Replayed header
    expected = {
        field.name: _shape(hints[field.name])
        for field in dataclasses.fields(internal)
        if field.name not in header_fields
    }
    got = {name: _shape(field.annotation) for name, field in http.model_fields.items() if name != "task_id"}
    assert got == expected
