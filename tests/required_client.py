"""The official `openai` Python SDK forcing tool calls on `safeguard serve`, for tests/server.rs.

Usage: required_client.py BASE_URL [UNUSED]

The server runs a random-weight fixture, which never calls a tool (nor writes any harmony
message) of its own accord. Under tool_choice "required" or a named function, every
response must still be one well-formed call to an offered tool (the named one, when named)
whose arguments validate (the `jsonschema` package) against that tool's parameters.
Every check raises on failure; the last line printed is "ok".
"""

from __future__ import annotations

import json
import sys

import jsonschema
import openai

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
CHAT_TOOLS = [{"type": "function", "function": {"name": n, "description": n, "parameters": s}} for n, s in SCHEMAS.items()]
RESPONSES_TOOLS = [{"type": "function", "name": n, "description": n, "parameters": s} for n, s in SCHEMAS.items()]
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def valid_call(name: str, arguments: str, want: str | None) -> None:
    check(name in SCHEMAS and (want is None or name == want), f"called {name!r}, wanted {want or 'any'}")
    jsonschema.Draft202012Validator(SCHEMAS[name]).validate(json.loads(arguments))


def main() -> None:
    client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    named = {"type": "function", "function": {"name": "get_time"}}
    for choice, want, seed in [("required", None, 1), (named, "get_time", 2), ("required", None, 3)]:
        r = client.chat.completions.create(model=model, messages=QUESTION, tools=CHAT_TOOLS, tool_choice=choice,
                                           max_tokens=96, temperature=1.0, seed=seed)
        c = r.choices[0]
        check(c.finish_reason == "tool_calls" and c.message.tool_calls, f"finish {c.finish_reason}: {c.message}")
        call = c.message.tool_calls[0]
        valid_call(call.function.name, call.function.arguments, want)

    # Streamed: the deltas assemble into the same kind of call.
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, tools=CHAT_TOOLS,
                                                 tool_choice="required", max_tokens=96, stream=True))
    pieces = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    check(bool(pieces), "no tool call deltas")
    valid_call(pieces[0].function.name, "".join(p.function.arguments or "" for p in pieces), None)

    # Responses: a function_call item.
    response = client.responses.create(model=model, input="Weather in Paris?", tools=RESPONSES_TOOLS,
                                       tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=96)
    calls = [item for item in response.output if item.type == "function_call"]
    check(len(calls) == 1, f"output {response.output}")
    valid_call(calls[0].name, calls[0].arguments, "get_weather")
    print("ok")


if __name__ == "__main__":
    main()
