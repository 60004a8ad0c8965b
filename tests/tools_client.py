"""The official `openai` Python SDK calling tools on `safeguard serve`, for tests/server.rs.

Usage: tools_client.py BASE_URL EXPECTED_JSON

The server runs the scripted tool-call fixture: whatever the conversation, the
model calls functions.get_weather with the arguments in EXPECTED_JSON. Prompts
are checked against openai-harmony's render of the same conversation (its
length, as usage.prompt_tokens reports it). Every check raises on failure; the
last line printed is "ok".
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "fixtures"))
from tokenizer import find_ranks  # noqa: E402  (tests/fixtures/tokenizer.py)

os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(find_ranks().parent)

import openai  # noqa: E402
import openai_harmony as oh  # noqa: E402

ENCODING = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)

PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "A city name"},
        "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
    },
    "required": ["city"],
}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather.", "parameters": PARAMETERS}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather.", "parameters": PARAMETERS}]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def harmony_prompt_tokens(messages: list[oh.Message]) -> int:
    """openai-harmony's prompt for the server's defaults (medium effort) with the tool."""
    system = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort.MEDIUM)
    developer = oh.DeveloperContent.new().with_function_tools(
        [oh.ToolDescription.new("get_weather", "Current weather.", parameters=PARAMETERS)]
    )
    conversation = oh.Conversation.from_messages(
        [oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
         oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer)] + messages
    )
    return len(ENCODING.render_conversation_for_completion(conversation, oh.Role.ASSISTANT))


def main() -> None:
    base_url, expected_path = sys.argv[1], sys.argv[2]
    expected = json.loads(pathlib.Path(expected_path).read_text())
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    question = [{"role": "user", "content": "Weather in Paris?"}]

    # Not streamed: one call, OpenAI's shape.
    r = client.chat.completions.create(model=model, messages=question, tools=CHAT_TOOLS, max_tokens=64)
    choice = r.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish {choice.finish_reason}")
    check(choice.message.content is None, f"content {choice.message.content!r}")
    calls = choice.message.tool_calls
    check(len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_"), f"calls {calls}")
    check((calls[0].function.name, calls[0].function.arguments) == (expected["tool"], expected["arguments"]),
          f"call {calls[0].function}")
    check(r.usage.prompt_tokens == harmony_prompt_tokens([oh.Message.from_role_and_content(oh.Role.USER, "Weather in Paris?")]),
          f"prompt tokens {r.usage.prompt_tokens}")

    # Streamed: the name first, then the arguments in pieces, assembled as the SDK does.
    chunks = list(client.chat.completions.create(model=model, messages=question, tools=CHAT_TOOLS, max_tokens=64, stream=True))
    pieces = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    check(pieces[0].function.name == expected["tool"] and pieces[0].id.startswith("call_"), f"first piece {pieces[0]}")
    check(all(p.index == 0 and p.function.name is None for p in pieces[1:]) and len(pieces) > 2, f"pieces {pieces}")
    check("".join(p.function.arguments or "" for p in pieces) == expected["arguments"], "streamed arguments")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["tool_calls"], f"stream finish {finishes}")

    # The round trip: the call and its result go back as harmony commentary.
    result = '{"temperature": 18}'
    follow_up = question + [choice.message.model_dump(exclude_none=True),
                            {"role": "tool", "tool_call_id": calls[0].id, "content": result}]
    again = client.chat.completions.create(model=model, messages=follow_up, tools=CHAT_TOOLS, max_tokens=64)
    harmony_turns = [
        oh.Message.from_role_and_content(oh.Role.USER, "Weather in Paris?"),
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, expected["arguments"]).with_channel("commentary")
        .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"),
        oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, "functions.get_weather"), result)
        .with_channel("commentary").with_recipient("assistant"),
    ]
    check(again.usage.prompt_tokens == harmony_prompt_tokens(harmony_turns), f"round trip prompt {again.usage.prompt_tokens}")
    check(again.choices[0].finish_reason == "tool_calls", "the scripted model calls again")
    try:
        client.chat.completions.create(model=model, messages=question + [{"role": "tool", "tool_call_id": "call_x", "content": "1"}])
        raise AssertionError("an unknown tool_call_id was accepted")
    except openai.BadRequestError as e:
        check("call_x" in str(e), str(e))

    # Responses: a function_call item, streamed with its argument events; a round trip.
    response = client.responses.create(model=model, input="Weather in Paris?", tools=RESPONSES_TOOLS, max_output_tokens=64)
    item = response.output[0]
    check(item.type == "function_call" and item.name == expected["tool"] and item.arguments == expected["arguments"],
          f"item {item}")
    events = list(client.responses.create(model=model, input="Weather in Paris?", tools=RESPONSES_TOOLS,
                                          max_output_tokens=64, stream=True))
    names = [e.type for e in events]
    check(names[:3] == ["response.created", "response.in_progress", "response.output_item.added"], f"events {names}")
    check(names[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"],
          f"events {names}")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    check(deltas == expected["arguments"], f"argument deltas {deltas!r}")
    follow = client.responses.create(
        model=model, tools=RESPONSES_TOOLS, max_output_tokens=64,
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments},
               {"type": "function_call_output", "call_id": item.call_id, "output": result}],
    )
    check(follow.usage.input_tokens == harmony_prompt_tokens(harmony_turns), f"responses round trip {follow.usage.input_tokens}")
    print("ok")


if __name__ == "__main__":
    main()
