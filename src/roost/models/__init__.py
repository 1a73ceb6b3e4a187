"""Models: the protocol, providers and wrappers."""

from roost.models.base import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    ToolCall,
    ToolSpec,
    complete,
)

__all__ = [
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "StreamItem",
    "TextDelta",
    "ToolCall",
    "ToolSpec",
    "complete",
]
