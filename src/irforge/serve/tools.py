"""Chat tool calls: the tools offered, the grammar a forced call must follow, the call parsed.

The model sees the tools through its chat template (Llama 3.1's renders OpenAI's `tools`
list), and answers a call as JSON `{"name": ..., "parameters": {...}}`, Llama 3.1's format for
custom tools (`arguments` is read too). `tool_choice` "required" or a named function makes the
answer a call by structured output (guided.py), so its arguments follow the function's JSON
schema; "auto" lets the model choose, and an answer that parses as a call to an offered tool
becomes one; "none" offers no tools.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from irforge.engine.errors import BadRequest
from irforge.engine.guided import GuidedSpec

MAX_TOOLS = 128
PYTHON_TAG = "<|python_tag|>"  # Llama 3.1 may open a call with it


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]


def parse_tools(tools: list[dict[str, Any]] | None) -> list[Tool]:
    """OpenAI's `tools` ([{type: function, function: {name, parameters}}]), checked."""
    out = []
    for i, t in enumerate(tools or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise BadRequest(
                f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", "tools"
            )
        name, params = fn.get("name"), fn.get("parameters", {"type": "object"})
        if not isinstance(name, str) or not name or not isinstance(params, dict):
            raise BadRequest(f"tools[{i}].function needs a name and a parameters object", "tools")
        out.append(Tool(name, params))
    if len(out) > MAX_TOOLS:
        raise BadRequest(f"at most {MAX_TOOLS} tools, got {len(out)}", "tools")
    if len({t.name for t in out}) != len(out):
        raise BadRequest("tool names must be distinct", "tools")
    return out


def forced(tools: list[Tool], choice: Any) -> tuple[list[Tool], GuidedSpec | None]:
    """(the tools the template offers, the grammar of a forced call or None) for tool_choice."""
    if choice in (None, "auto"):
        return tools, None
    if choice == "none":
        return [], None
    if choice == "required":
        if not tools:
            raise BadRequest("tool_choice 'required' needs tools", "tool_choice")
        return tools, GuidedSpec.of("json_schema", {"anyOf": [_call_schema(t) for t in tools]})
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    match = next((t for t in tools if t.name == name), None)
    if match is None:
        raise BadRequest(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    return tools, GuidedSpec.of("json_schema", _call_schema(match))


def _call_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "parameters": tool.parameters},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


def opens_call(text: str) -> bool | None:
    """Whether an answer that begins with `text` opens a call (a JSON object, maybe after the
    python tag): True, False, or None while only space or part of the tag has come."""
    start = text.lstrip()
    if not start or (PYTHON_TAG.startswith(start) and start != PYTHON_TAG):
        return None
    body = start.removeprefix(PYTHON_TAG).lstrip()
    return None if not body else body.startswith("{")


def tool_calls(text: str, tools: list[Tool]) -> list[dict[str, Any]] | None:
    """OpenAI's `tool_calls` for an answer that is a call to an offered tool, else None."""
    try:
        doc = json.loads(text.strip().removeprefix(PYTHON_TAG))
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("name") not in {t.name for t in tools}:
        return None
    args = doc.get("parameters", doc.get("arguments", {}))
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": doc["name"], "arguments": json.dumps(args, ensure_ascii=False)},
        }
    ]
