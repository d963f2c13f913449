"""OpenAI's `tools` and `tool_choice` -> the prediction service's `ToolSetup`, and its
calls back to OpenAI's `tool_calls`."""

from typing import Any

from daemon.errors import InvalidRequest
from daemon.prediction.types import ToolCall, ToolMode, ToolSetup


def parse_tools(tools: Any, tool_choice: Any) -> ToolSetup | None:
    """Validated tools and choice, or None when the request uses no tools."""
    if tools is None:
        if tool_choice not in (None, "none"):
            raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools", code="invalid_type")
    names: list[str] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise InvalidRequest(
                f'\'tools[{i}]\' must be {{"type": "function", "function": {{"name": ...}}}}',
                param="tools",
            )
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise InvalidRequest(
                f"'tools[{i}].function.parameters' must be a JSON schema", param="tools"
            )
        names.append(str(function["name"]))
    if tool_choice is None or tool_choice in ("auto", "none", "required"):
        mode: ToolMode = tool_choice or "auto"
        return ToolSetup(mode, tools, names) if tools else None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or name not in names:
            raise InvalidRequest(
                f"'tool_choice' names {name!r}, which is not in 'tools'", param="tool_choice"
            )
        return ToolSetup("required", tools, [str(name)])
    raise InvalidRequest(
        '\'tool_choice\' must be "none", "auto", "required" or '
        '{"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def to_openai_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
