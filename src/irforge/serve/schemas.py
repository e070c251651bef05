"""Request bodies: OpenAI completions and chat completions, and shortfin's /generate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from irforge.runtime.sampling import MAX_LOGPROBS
from irforge.serve.limits import MAX_MESSAGES, MAX_PROMPTS, MAX_STOP, MAX_STOP_CHARS

StopString = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None


class _Body(BaseModel):
    # clients send fields this server does not use (user, logit_bias=None, ...): ignore them
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: object) -> object:
        # JSON's "\ud800" parses to a lone surrogate, which no tokenizer or encoder accepts
        _check_unicode(data)
        return data


def _check_unicode(value: object) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"a string is not valid Unicode (a lone surrogate at index {e.start})"
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class OpenAISampling(_Body):
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="vLLM's extension; 0 or -1 means all tokens")
    seed: int | None = None
    n: int = Field(1, ge=1)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = Field(1.0, description="vLLM's extension")
    min_tokens: int = Field(0, ge=0, description="vLLM's extension")
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP)
    # OpenAI's: token id (as a string key) -> bias in [-100, 100]
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    # structured output: OpenAI's response_format, or vLLM's guided_* (one at a time)
    response_format: ResponseFormat | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = Field(None, max_length=4096)
    guided_choice: list[str] | None = Field(None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _all_tokens(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("top_k") == -1:  # vLLM's spelling of "off"
            data = {**data, "top_k": 0}
        return data

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(OpenAISampling):
    prompt: (
        str
        | list[int]
        | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
        | Annotated[list[list[int]], Field(max_length=MAX_PROMPTS)]
    )
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or not p or isinstance(p[0], int):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class ChatRequest(OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None


class SamplingParams(_Body):
    """shortfin's sampling_params, plus seed, stop and ignore_eos."""

    n: int = Field(1, ge=1)
    max_completion_tokens: int = Field(50, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    num_beams: int = Field(1, ge=1)
    seed: int | None = None
    stop: Stop = None
    ignore_eos: bool = False


def _one_sampling() -> SamplingParams | list[SamplingParams]:
    return SamplingParams()


class GenerateRequest(_Body):
    """shortfin's GenerateReqInput: `text` or `input_ids`, one prompt or a list."""

    text: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)] | None = None
    input_ids: list[int] | Annotated[list[list[int]], Field(max_length=MAX_PROMPTS)] | None = None
    sampling_params: (
        SamplingParams | Annotated[list[SamplingParams], Field(max_length=MAX_PROMPTS)]
    ) = Field(default_factory=_one_sampling)
    rid: str | list[str] | None = None
    return_input_ids: bool = False
    # SGLang's logprob fields, which shortfin's GenerateReqInput declares (and 3.9 ignores)
    return_logprob: bool = False
    logprob_start_len: int = Field(-1, ge=-1)  # -1: no prompt logprobs
    top_logprobs_num: int = Field(0, ge=0, le=MAX_LOGPROBS)
    return_text_in_logprobs: bool = False
    stream: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> GenerateRequest:
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of `text` and `input_ids`")
        return self

    def prompts(self) -> list[str | list[int]]:
        if self.text is not None:
            return [self.text] if isinstance(self.text, str) else list(self.text)
        ids = self.input_ids or []
        if ids and isinstance(ids[0], list):
            return list(ids)  # type: ignore[arg-type]
        return [ids]  # type: ignore[list-item]

    @property
    def batched(self) -> bool:
        if self.text is not None:
            return isinstance(self.text, list)
        return bool(self.input_ids) and isinstance(self.input_ids[0], list)  # type: ignore[index]
