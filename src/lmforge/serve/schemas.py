"""Request bodies in OpenAI's shapes (what `openai` the package sends), as pydantic models.

Unknown fields are refused, as OpenAI does ("Unrecognized request argument"); fields OpenAI
has but lmforge does not implement are accepted only at their neutral value, so a client
never silently gets something other than what it asked for. FastAPI derives the OpenAPI
schema from these classes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmforge.serve.config import MAX_CHOICES, MAX_N

_SEED = Field(None, ge=-(2**63), le=2**63 - 1 - MAX_N,
              description="Same seed, same request, same model: the same sample.")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """Fields shared by completions and chat completions."""

    model: str = Field(..., description="The served model's name (see /v1/models).")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1; 0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, description="Extension (as vLLM): 0 is off.")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(None, description="Up to 4 strings; the text ends "
                                                            "before the first one written.")
    seed: int | None = _SEED
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # OpenAI fields accepted at their neutral value only (see `unsupported`).
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for a field set to something lmforge cannot do."""
        if self.presence_penalty:
            return "presence_penalty", "presence_penalty is not supported; leave it at 0."
        if self.frequency_penalty:
            return "frequency_penalty", "frequency_penalty is not supported; leave it at 0."
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported."
        if self.logprobs not in (None, False, 0):
            return "logprobs", "logprobs are not supported."
        return None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(stops)


class CompletionRequest(SamplingFields):
    """POST /v1/completions: continue a prompt (text, texts, token ids, or lists of ids)."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="Text, a list of texts, token ids, or a list of token id lists.")
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported."
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported."
        if self.best_of not in (None, 1, self.n):
            return "best_of", "best_of other than n is not supported."
        return super().unsupported()


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message. Extra fields (name, tool_calls, tool_call_id) pass through to the
    prompt builder, which decides what the model can read."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions: the next assistant message of a conversation."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.top_logprobs:
            return "top_logprobs", "logprobs are not supported."
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format", "only response_format {'type': 'text'} is supported."
        return super().unsupported()

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class FeedbackRequest(_Body):
    """POST /v1/feedback: what a person thought of one answer."""

    response_id: str = Field(..., min_length=1, max_length=128,
                             description="The `id` of a completion this server returned.")
    choice: int = Field(0, ge=0, le=MAX_CHOICES - 1,
                        description="Which choice (index) it is about.")
    rating: Literal[-1, 1] | None = Field(None, description="+1 (good) or -1 (bad).")
    preferred: str | None = Field(None, max_length=100_000,
                                  description="The answer the person would have wanted.")
    comment: str | None = Field(None, max_length=10_000)
