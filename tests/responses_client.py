"""The official `openai` Python SDK continuing conversations with `previous_response_id`, for tests/server.rs.

Usage:
  responses_client.py chain BASE_URL FRESH_BASE_URL   (a random fixture; FRESH_BASE_URL caches no prefixes)
  responses_client.py tools BASE_URL                  (the scripted tool-call fixture)
  responses_client.py store BASE_URL                  (a random fixture, served with --responses-store 2)

Prompts are checked against openai-harmony's render of the whole conversation (its length, as
usage.input_tokens reports it); a chain's output against the same conversation sent whole to a
server that computes it from scratch. Every check raises on failure; the last line printed is "ok".
"""

from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "fixtures"))
from tokenizer import find_ranks  # noqa: E402  (tests/fixtures/tokenizer.py)

os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(find_ranks().parent)

import openai  # noqa: E402
import openai_harmony as oh  # noqa: E402

ENCODING = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather.", "parameters": PARAMETERS}]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def harmony_message(item: dict, names: dict[str, str]) -> oh.Message:
    """One Responses item as the harmony message it stands for."""
    kind = item.get("type", "message")
    if kind == "message" and item["role"] == "user":
        text = item["content"] if isinstance(item["content"], str) else "".join(p["text"] for p in item["content"])
        return oh.Message.from_role_and_content(oh.Role.USER, text)
    if kind == "message":
        text = "".join(p["text"] for p in item["content"])
        return oh.Message.from_role_and_content(oh.Role.ASSISTANT, text).with_channel("final")
    if kind == "reasoning":
        text = "\n".join(p["text"] for p in item["content"])
        return oh.Message.from_role_and_content(oh.Role.ASSISTANT, text).with_channel("analysis")
    if kind == "function_call":
        names[item["call_id"]] = item["name"]
        return (oh.Message.from_role_and_content(oh.Role.ASSISTANT, item["arguments"]).with_channel("commentary")
                .with_recipient(f"functions.{item['name']}").with_content_type("<|constrain|>json"))
    if kind == "function_call_output":
        author = oh.Author.new(oh.Role.TOOL, f"functions.{names[item['call_id']]}")
        return oh.Message.from_author_and_content(author, item["output"]).with_channel("commentary").with_recipient("assistant")
    raise ValueError(f"no harmony message for {item}")


def harmony_prompt_tokens(items: list[dict], tools: bool = False) -> int:
    """openai-harmony's prompt for the server's defaults (medium effort) and the conversation `items`."""
    system = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort.MEDIUM)
    messages = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    if tools:
        developer = oh.DeveloperContent.new().with_function_tools(
            [oh.ToolDescription.new("get_weather", "Current weather.", parameters=PARAMETERS)])
        messages.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
    names: dict[str, str] = {}
    messages += [harmony_message(item, names) for item in items]
    conversation = oh.Conversation.from_messages(messages)
    return len(ENCODING.render_conversation_for_completion(conversation, oh.Role.ASSISTANT))


def items(response) -> list[dict]:
    return [item.model_dump(exclude_none=True) for item in response.output]


def texts(response) -> list[tuple]:
    """What a response said, item by item."""
    return [(i["type"], [p["text"] for p in i.get("content", [])], i.get("name"), i.get("arguments"))
            for i in items(response)]


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": text}


def continued(client, previous, conversation: list[dict], new: list[dict], **kwargs):
    """A follow-up to `previous` (None: a first turn) that adds `new`; its prompt and cache checked."""
    r = client.responses.create(input=new, previous_response_id=previous.id if previous else None, **kwargs)
    check(r.store is True and r.previous_response_id == (previous.id if previous else None), f"echo {r}")
    conversation += new
    expected = harmony_prompt_tokens(conversation, tools="tools" in kwargs)
    check(r.usage.input_tokens == expected, f"prompt {r.usage.input_tokens} tokens, harmony's {expected}")
    if previous is not None:
        # The earlier prompt, all but its last token, comes from the prefix cache.
        cached = r.usage.input_tokens_details.cached_tokens
        check(cached == previous.usage.input_tokens - 1, f"cached {cached} of {previous.usage.input_tokens}")
    conversation += items(r)
    return r


def chain(client: openai.OpenAI, fresh: openai.OpenAI, model: str) -> None:
    common = dict(model=model, max_output_tokens=24, temperature=0)
    conversation: list[dict] = []
    r = None
    for question in ["Is this spam?", "Why do you say so?", "Are you sure?"]:
        r = continued(client, r, conversation, [user(question)], **common)
    check(client.responses.retrieve(r.id).output == r.output, "retrieve gives the response as answered")

    # The same conversation sent whole, to a server that caches nothing: the same prompt, the same answer.
    whole = fresh.responses.create(input=conversation[:-len(r.output) or None], store=False, **common)
    check(whole.usage.input_tokens == r.usage.input_tokens, f"whole {whole.usage.input_tokens}, chain {r.usage.input_tokens}")
    check(whole.usage.input_tokens_details.cached_tokens == 0, "the fresh server computes it all")
    check(texts(whole) == texts(r), f"whole {texts(whole)}\nchain {texts(r)}")
    check(whole.usage.output_tokens == r.usage.output_tokens, "output tokens")


def tools(client: openai.OpenAI, model: str) -> None:
    common = dict(model=model, max_output_tokens=64, tools=TOOLS)
    # The reasoning before a call stays in the prompt while the turn calls tools.
    thought = {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "I need the weather tool."}]}
    conversation: list[dict] = []
    first = continued(client, None, conversation, [user("Weather in Paris?"), thought], **common)
    call = first.output[0]
    check(call.type == "function_call" and call.name == "get_weather", f"output {first.output}")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 18}'}
    second = continued(client, first, conversation, [result], **common)
    check(second.output[0].type == "function_call", f"the scripted model calls again: {second.output}")
    third = continued(client, second, conversation, [user("And in Rome?")], **common)
    whole = client.responses.create(input=conversation[:-len(third.output)], store=False, **common)
    check(whole.usage.input_tokens == third.usage.input_tokens and texts(whole) == texts(third), f"whole {whole}")

    # A call id that no stored call has is the request's mistake.
    try:
        client.responses.create(previous_response_id=first.id, input=[dict(result, call_id="call_nope")], **common)
        raise AssertionError("an unknown call_id was accepted")
    except openai.BadRequestError as e:
        check(e.body["param"] == "input[0].call_id" and "call_nope" in e.message, str(e))


def not_found(what, id: str, param: str | None) -> None:
    try:
        what()
        raise AssertionError(f"{id} was found")
    except openai.NotFoundError as e:
        check(e.body["param"] == param and id in e.message, f"{param}: {e.body}")


def store(client: openai.OpenAI, model: str) -> None:
    common = dict(model=model, max_output_tokens=4)
    first, second, third = (client.responses.create(input=q, **common) for q in ["one", "two", "three"])
    # Two are kept: the oldest went.
    not_found(lambda: client.responses.create(previous_response_id=first.id, input="again", **common),
              first.id, "previous_response_id")
    not_found(lambda: client.responses.retrieve(first.id), first.id, None)
    check(client.responses.retrieve(second.id).id == second.id, "the second is kept")
    # Reading the second makes the third the least recently used.
    client.responses.create(previous_response_id=second.id, input="again", **common)
    not_found(lambda: client.responses.retrieve(third.id), third.id, None)
    client.responses.delete(second.id)
    not_found(lambda: client.responses.retrieve(second.id), second.id, None)
    not_found(lambda: client.responses.delete(second.id), second.id, None)

    unstored = client.responses.create(input="private", store=False, **common)
    check(unstored.store is False, "store: false is echoed")
    not_found(lambda: client.responses.create(previous_response_id=unstored.id, input="again", **common),
              unstored.id, "previous_response_id")

    # A streamed response is kept as well.
    events = list(client.responses.create(input="streamed", stream=True, **common))
    streamed = events[-1].response
    check(events[-1].type in ("response.completed", "response.incomplete") and streamed.store, f"{events[-1]}")
    follow = client.responses.create(previous_response_id=streamed.id, input="again", **common)
    check(follow.usage.input_tokens_details.cached_tokens == streamed.usage.input_tokens - 1, "streamed prefix reused")


def main() -> None:
    mode, base_url, *rest = sys.argv[1:]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    modes = {
        "chain": lambda: chain(client, openai.OpenAI(base_url=rest[0], api_key="unused", max_retries=0), model),
        "tools": lambda: tools(client, model),
        "store": lambda: store(client, model),
    }
    modes[mode]()
    print("ok")

if __name__ == "__main__":
    main()
