"""The service's response models: they are what /docs shows and what clients receive."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PathologyResult(BaseModel):
    name: str
    probability: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1, description="chosen on validation (see threshold_rule)")
    finding: bool = Field(description="probability >= threshold")


class ImageResult(BaseModel):
    index: int = Field(description="position of the file in the request, from 0")
    filename: str | None = Field(description="the uploaded file's name, as a label only")
    findings: list[str] = Field(description="pathologies at or above their threshold")
    pathologies: list[PathologyResult]


class ModelRef(BaseModel):
    name: str
    version: str
    architecture: str
    runtime: str
    threshold_rule: str
    thresholds_from: str


class Timing(BaseModel):
    decode_ms: float
    inference_ms: float
    total_ms: float = Field(description="from the request's arrival to the response")


class PredictResponse(BaseModel):
    model: ModelRef
    results: list[ImageResult]
    timing: Timing
    intended_use: str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str | None = None


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong with the request, and what is accepted")
