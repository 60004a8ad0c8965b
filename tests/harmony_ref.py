"""openai-harmony as the reference for tests/harmony.rs, run offline.

Reads one JSON request on stdin and writes one JSON answer on stdout:

    {"render": [CONVERSATION, ...], "parse": [[TOKEN, ...], ...]}
 -> {"render": [[ID, ...], ...],
     "parse": [{"strict": RESULT, "lenient": RESULT}, ...]}

CONVERSATION = {"system": {"identity", "knowledge_cutoff", "date", "effort"},
                "instructions": str | null, "tools": [TOOL, ...],
                "response_format": FORMAT | null, "messages": [MESSAGE, ...]}
TOOL = {"name", "description", "parameters": JSON-SCHEMA | null}
FORMAT = {"name", "description": str | null, "schema": JSON-SCHEMA}
MESSAGE = {"role", "name", "recipient", "channel", "content_type", "content"}
RESULT = {"messages": [MESSAGE, ...], "error": str | null}

Renders use `render_conversation_for_completion(conversation, Role.ASSISTANT)`
with harmony's own SystemContent / DeveloperContent. Parses feed the tokens one
by one to `StreamableParser(encoding, Role.ASSISTANT, strict=...)`, then
`process_eos()`; on an error, RESULT holds the messages parsed before it.

The o200k_base ranks come from the tiktoken-rs crate (found with `cargo
metadata`, as the tokenizer fixture does) through TIKTOKEN_ENCODINGS_BASE, so
nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "fixtures"))
from tokenizer import find_ranks  # noqa: E402  (tests/fixtures/tokenizer.py)

ranks = find_ranks()
if ranks.name != "o200k_base.tiktoken":
    raise SystemExit(f"expected a file named o200k_base.tiktoken, got {ranks}")
os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(ranks.parent)

import openai_harmony as oh  # noqa: E402

ENCODING = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
EFFORTS = {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM, "high": oh.ReasoningEffort.HIGH}


def harmony_message(spec: dict) -> oh.Message:
    role = oh.Role(spec["role"])
    author = oh.Author(role=role, name=spec.get("name"))
    message = oh.Message.from_author_and_content(author, spec["content"])
    if spec.get("channel") is not None:
        message = message.with_channel(spec["channel"])
    if spec.get("recipient") is not None:
        message = message.with_recipient(spec["recipient"])
    if spec.get("content_type") is not None:
        message = message.with_content_type(spec["content_type"])
    return message


def response_format_section(spec: dict) -> str:
    """openai-harmony has no API for response formats; its format guide puts
    them at the end of the developer message, the schema as compact JSON."""
    comment = f"// {spec['description']}\n" if spec.get("description") else ""
    schema = json.dumps(spec["schema"], separators=(",", ":"), ensure_ascii=False)
    return f"# Response Formats\n\n## {spec['name']}\n\n{comment}{schema}"


def render(spec: dict) -> list[int]:
    system = spec["system"]
    content = (
        oh.SystemContent.new()
        .with_model_identity(system["identity"])
        .with_knowledge_cutoff(system["knowledge_cutoff"])
        .with_reasoning_effort(EFFORTS[system["effort"]])
    )
    if system.get("date") is not None:
        content = content.with_conversation_start_date(system["date"])
    messages = [oh.Message.from_role_and_content(oh.Role.SYSTEM, content)]
    instructions = spec.get("instructions")
    tools = [
        oh.ToolDescription.new(t["name"], t["description"], parameters=t.get("parameters"))
        for t in spec.get("tools", [])
    ]
    response_format = spec.get("response_format")
    if instructions is not None or tools or response_format is not None:
        developer = oh.DeveloperContent.new()
        if instructions is not None:
            developer = developer.with_instructions(instructions)
        if tools:
            developer = developer.with_function_tools(tools)
        messages.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
    messages += [harmony_message(m) for m in spec["messages"]]
    conversation = oh.Conversation.from_messages(messages)
    ids = ENCODING.render_conversation_for_completion(conversation, oh.Role.ASSISTANT)
    if response_format is not None:
        # The developer message is the second; its text is encoded as one piece.
        start, message, end = (ENCODING.encode(t, allowed_special="all")[0] for t in ("<|start|>", "<|message|>", "<|end|>"))
        second_start = [i for i, t in enumerate(ids) if t == start][1]
        begin = ids.index(message, second_start) + 1
        stop = ids.index(end, begin)
        text = ENCODING.decode_utf8(ids[begin:stop])
        text = f"{text}\n\n" if text else ""
        ids[begin:stop] = ENCODING.encode(text + response_format_section(response_format), disallowed_special=())
    return ids


def message_dict(message: oh.Message) -> dict:
    return {
        "role": message.author.role.value,
        "name": message.author.name,
        "recipient": message.recipient,
        "channel": message.channel,
        "content_type": message.content_type,
        "content": "".join(c.text for c in message.content),
    }


def parse(tokens: list[int], strict: bool) -> dict:
    parser = oh.StreamableParser(ENCODING, oh.Role.ASSISTANT, strict=strict)
    error = None
    try:
        for token in tokens:
            parser.process(token)
        parser.process_eos()
    except oh.HarmonyError as e:
        error = str(e)
    return {"messages": [message_dict(m) for m in parser.messages], "error": error}


def main() -> None:
    request = json.load(sys.stdin)
    answer = {
        "render": [render(c) for c in request.get("render", [])],
        "parse": [{"strict": parse(t, True), "lenient": parse(t, False)} for t in request.get("parse", [])],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
