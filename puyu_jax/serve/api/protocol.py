"""Request bodies of the OpenAI-compatible API (pydantic, strict JSON types, unknown fields rejected).

Every field a client may send is declared here; anything else fails validation with an
error that names it (HTTP 400), so no option is silently ignored. Fields the API knows but
this server cannot honour are declared with the only value it accepts and a message saying
why (e.g. `suffix`, `best_of` > n).

Every number is range-checked here, before it can reach the engine: integers fit the engine's
int32 arrays (`INT32_MAX`), floats are finite and within their documented range, and lists
and strings that the engine loops over (stop strings, tools, prompts in a batch, names) have
an upper bound. Sizes of free text are bounded by the body limit and the context length.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from puyu_jax.serve.api.errors import APIError
from puyu_jax.serve.config import MAX_TOP_LOGPROBS

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_N = 16
MAX_TOOLS = 128
MAX_PROMPTS = 256  # prompts in one /v1/completions batch (each becomes n engine requests)
MAX_NAME_CHARS = 256
INT32_MAX = 2**31 - 1  # the engine's token, length and top-k arrays are int32

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# ------------------------------------------------------------------------------------------ messages


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCallIn(_Strict):
    name: Name
    arguments: str


class ToolCallIn(_Strict):
    """A tool call an assistant message carries in the history."""

    id: Name = ""
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Name | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: Name | None = None
    # echoed back by clients that resend a response message as it came; only empty values are accepted
    refusal: None = None
    function_call: None = None
    audio: None = None
    annotations: list[Any] | None = None

    @field_validator("annotations")
    @classmethod
    def _no_annotations(cls, v):
        if v:
            raise ValueError("annotations are not supported in input messages")
        return v

    @model_validator(mode="after")
    def _shape(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages may carry tool_calls")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


# ------------------------------------------------------------------------------------------ tools


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v):
        """The parameters are a JSON Schema of an object (as OpenAI requires): type object, properties a map
        of schemas, required a list of property names."""
        if v is None:
            return v
        if v.get("type", "object") != "object":
            raise ValueError(f"the parameters schema must have type 'object', got {v.get('type')!r}")
        props = v.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values()):
            raise ValueError("'properties' must map each parameter name to a schema object")
        required = v.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ValueError("'required' must be a list of parameter names")
        return v


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: Name


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(_Strict):
    name: str = Field("response", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """`text`; `json_object` (any JSON object) or `json_schema` (JSON valid under the schema), both
    enforced while decoding (see `puyu_jax.serve.guided`)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format json_schema needs a json_schema object with a schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"response_format {self.type} takes no json_schema")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


# ------------------------------------------------------------------------------------------ requests


class _Sampling(_Strict):
    """Options shared by both endpoints. None means the server's default."""

    model: Name
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)  # -1 and 0 disable
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool = False  # extension (vLLM / LMDeploy): keep generating past end-of-sequence
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Name | None = None
    # extensions (vLLM's names): constrain the output, at most one of them
    guided_json: dict[str, Any] | None = None  # a JSON schema
    guided_regex: str | None = Field(None, min_length=1)
    guided_choice: list[str] | None = Field(None, min_length=1)
    guided_grammar: str | None = Field(None, min_length=1)  # EBNF (xgrammar's GBNF dialect)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return v
        items = [v] if isinstance(v, str) else v
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences are allowed, got {len(items)}")
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in items):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return v

    def check(self) -> None:
        """Checks across fields; raises APIError naming the offending field."""
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")
        given = [k for k, _ in self.guided()]
        if len(given) > 1:
            raise APIError(400, f"only one output constraint per request, got {' and '.join(given)}", param=given[1])

    def guided(self) -> list[tuple[str, Any]]:
        """The output constraints sent, as (request field, GenerationConfig keyword and value)."""
        out = []
        for field_, key in (("guided_json", "json_schema"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                            ("guided_grammar", "grammar")):
            value = getattr(self, field_)
            if value is not None:
                out.append((field_, {key: tuple(value) if key == "choice" else value}))
        return out

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDef] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    def guided(self) -> list[tuple[str, Any]]:
        out = super().guided()
        rf = self.response_format
        if rf is not None and rf.type == "json_object":
            out.insert(0, ("response_format", {"json_object": True}))
        elif rf is not None and rf.type == "json_schema":
            out.insert(0, ("response_format", {"json_schema": rf.json_schema.schema_}))
        return out

    def check(self) -> None:
        super().check()
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs to be true", param="top_logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None and \
                self.max_tokens != self.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens disagree; send one of them",
                           param="max_completion_tokens")

    def token_limit(self) -> tuple[int | None, str]:
        """The requested output limit and the field that set it."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


PromptType = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(_Sampling):
    prompt: PromptType
    max_tokens: int = Field(16, ge=0, le=INT32_MAX)  # 0 only with echo: score the prompt, generate nothing
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: None = None  # insertion (fill-in-the-middle) is not supported
    best_of: int | None = Field(None, ge=1, le=MAX_N)

    def check(self) -> None:
        super().check()
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, "best_of other than n is not supported (the server does not rank candidates)",
                           param="best_of")
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens=0 generates nothing; it is only meaningful with echo=true",
                           param="max_tokens")
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int) and \
                len(self.prompt) > MAX_PROMPTS:
            raise APIError(400, f"at most {MAX_PROMPTS} prompts may be sent in one request, got {len(self.prompt)}",
                           param="prompt")

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list (one per entry of a batch)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            return []
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)
