"""What a request to the engine's HTTP server is: the JSON bodies of its endpoints (pydantic
models; unknown fields ignored, names bounded by :data:`MAX_NAME_CHARS`), how a validation
failure reads, the error the server answers with (:class:`APIError`, OpenAI's error body), and
the tokenizers that turn a text prompt into token ids (a checkpoint's own, else
:class:`ByteTokenizer`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from simkv_engine.engine_types import TIERS

log = logging.getLogger(__name__)

#: The longest ``request_id``, ``model``, ``prompt_class`` or tier name accepted (characters).
MAX_NAME_CHARS = 256


class APIError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """An OpenAI-style error body: ``{"error": {"message", "type", "code"}}``."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


# -- tokenizers -----------------------------------------------------------------------------------
class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """The tokenizer of the random-weight shapes: a text's UTF-8 bytes are its token ids (so
    every id is < 256, inside any vocabulary of at least 256); an id decodes to the byte
    ``id % 256``, invalid UTF-8 to U+FFFD. Deterministic and dependency-free; the text of a
    random model's output is meaningless anyway."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A checkpoint's tokenizer: ``encode`` adds its special tokens (BOS), as vLLM's completions
    endpoint does; ``decode`` skips them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer for ``--model spec``: a checkpoint folder's own when it has one, else
    :class:`ByteTokenizer`."""
    path = Path(spec)
    if path.is_dir():
        from transformers import AutoTokenizer

        try:
            return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("model %s has no usable tokenizer (%s); text prompts use UTF-8 bytes", spec, exc)
    return ByteTokenizer()


# -- request bodies -------------------------------------------------------------------------------
def check_text(text: str) -> str:
    """``text`` if it can be encoded as UTF-8 (JSON's ``\\ud800`` escapes decode to lone
    surrogates, which cannot), else a :class:`ValueError` naming the character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text: a lone UTF-16 surrogate at character "
                         f"{exc.start}") from None
    return text


#: A free string a client names something with (echoed back): short; pydantic refuses lone
#: surrogates in a ``str`` field itself.
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class CompletionRequest(_Body):
    prompt: Any = Field(...)
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = 16
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    model: Name | None = None
    prompt_class: Name | None = None
    request_id: Name | None = None
    arrival_s: float | None = None


class PromptRequest(_Body):
    prompt: Any = Field(...)


class ClearRequest(_Body):
    tiers: list[Name] = Field(default_factory=lambda: list(TIERS), max_length=16)


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return f"the body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts) or "invalid request"

