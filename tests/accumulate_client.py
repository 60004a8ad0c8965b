"""Streamed answers add up to the answers sent whole, for tests/server.rs.

Usage: accumulate_client.py BASE_URL EXPECTED_JSON

For the same greedy request, a streamed chat completion put together by the
official `openai` SDK's own accumulator (ChatCompletionStreamState) must
equal the non-streamed completion: reasoning, content, tool calls, logprobs,
finish reason and usage. A streamed text completion's `text` pieces and
logprobs lists, concatenated, must equal the non-streamed ones. Both hold
for OpenAI's endpoints (BASE_URL, ending in /v1) and LM Studio's (/api/v0),
whose extra fields must agree too.

EXPECTED_JSON is the fixture generator's note of what the model writes: it
says which part of the answer this fixture exercises (an answer, reasoning,
or a tool call), so that no comparison is between two empty answers. A
fixture without that file (a random model) is used for logprobs and stop
strings.
Every check raises on failure; the last line printed is "ok".
"""

from __future__ import annotations

import json
import pathlib
import sys

import openai
from openai.lib.streaming.chat import ChatCompletionStreamState

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
LM_STUDIO_FIELDS = ["stats", "model_info", "runtime"]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def chat_fields(completion: dict) -> dict:
    """What a chat completion says, in a form both ways of getting it share."""
    choice = completion["choices"][0]
    message = choice["message"]
    return {
        # A whole answer says "" (or, for content beside tool calls, null as
        # OpenAI does) where a stream sends no piece at all.
        "content": message.get("content") or "",
        "reasoning": message.get("reasoning") or "",
        "reasoning_content": message.get("reasoning_content") or "",
        # Each answer gives its calls fresh ids.
        "tool_calls": [
            (c["id"].startswith("call_"), c["type"], c["function"]["name"], c["function"]["arguments"])
            for c in message.get("tool_calls") or []
        ],
        "logprobs": (choice.get("logprobs") or {}).get("content") or [],
        "finish_reason": choice["finish_reason"],
        "usage": completion["usage"],
    }


def lm_studio_fields(answer: dict) -> dict:
    """LM Studio's fields, less the timings, which differ from run to run."""
    fields = {key: answer.get(key) for key in LM_STUDIO_FIELDS}
    if fields["stats"] is not None:
        fields["stats"] = {"keys": sorted(fields["stats"]), "stop_reason": fields["stats"]["stop_reason"]}
    return fields


def compare_chat(client: openai.OpenAI, **request) -> dict:
    """One chat request streamed and not; the non-streamed answer's fields."""
    # The first call fills the prefix cache, so both compared calls find it.
    client.chat.completions.create(**request)
    whole = client.chat.completions.create(**request).to_dict()
    state = ChatCompletionStreamState()
    last = None
    stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        state.handle_chunk(chunk)
        if chunk.choices and chunk.choices[0].finish_reason:
            last = chunk.to_dict()
    # The snapshot, not get_final_completion(), which refuses a cut-off answer.
    summed = state.current_completion_snapshot.to_dict()
    got, want = chat_fields(summed), chat_fields(whole)
    check(got == want, f"streamed chat {json.dumps(got)}\n  != whole {json.dumps(want)}\n  for {request}")
    check(lm_studio_fields(last) == lm_studio_fields(whole),
          f"streamed extras {lm_studio_fields(last)} != {lm_studio_fields(whole)}")
    return want


def completion_fields(text: str, logprobs: dict | None, finish: str, usage: dict) -> dict:
    return {"text": text, "logprobs": logprobs, "finish_reason": finish, "usage": usage}


def compare_completion(client: openai.OpenAI, **request) -> dict:
    """One text completion streamed and not; the non-streamed answer's fields."""
    whole = client.completions.create(**request).to_dict()
    choice = whole["choices"][0]
    want = completion_fields(choice["text"], choice.get("logprobs"), choice["finish_reason"], whole["usage"])
    text, logprobs, finish, usage, last = "", None, None, None, None
    stream = client.completions.create(**request, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        chunk = chunk.to_dict()
        choice = chunk["choices"][0]
        text += choice["text"]
        if choice.get("logprobs") is not None:
            logprobs = logprobs or {key: [] for key in choice["logprobs"]}
            for key, values in choice["logprobs"].items():
                logprobs[key] += values
        if choice["finish_reason"]:
            finish, usage, last = choice["finish_reason"], chunk.get("usage"), chunk
    got = completion_fields(text, logprobs, finish, usage)
    check(got == want, f"streamed completion {json.dumps(got)}\n  != whole {json.dumps(want)}\n  for {request}")
    check(lm_studio_fields(last) == lm_studio_fields(whole),
          f"streamed extras {lm_studio_fields(last)} != {lm_studio_fields(whole)}")
    return want


def main() -> None:
    base_url, expected_path = sys.argv[1], sys.argv[2]
    expected_file = pathlib.Path(expected_path)
    expected = json.loads(expected_file.read_text()) if expected_file.exists() else {}
    root = base_url.removesuffix("/v1")
    clients = [openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
               for url in (base_url, f"{root}/api/v0")]
    messages = [{"role": "system", "content": "Reasoning: low\nAnswer briefly."},
                {"role": "user", "content": "Weather in Paris?"}]
    chat = {"model": "", "messages": messages, "max_tokens": 40, "temperature": 0}
    for client in clients:
        answer = compare_chat(client, **chat, logprobs=True, top_logprobs=3)
        if "tool" in expected:
            answer = compare_chat(client, **chat, tools=TOOLS)
            check(answer["tool_calls"] == [(True, "function", expected["tool"], expected["arguments"])]
                  and answer["finish_reason"] == "tool_calls", f"the fixture's call: {answer}")
        elif "reasoning" in expected:
            check(answer["reasoning"] == expected["reasoning"], f"the fixture's reasoning: {answer}")
        elif "answer" in expected:
            check(answer["content"] == expected["answer"] and answer["logprobs"], f"the fixture's answer: {answer}")
            # The answer is the stop string: its token's logprobs are sent
            # with the stream's last chunk, as the whole answer lists them.
            answer = compare_chat(client, **chat, logprobs=True, stop=[expected["answer"]])
            check(answer["content"] == "" and len(answer["logprobs"]) == 1, f"stopped answer: {answer}")
        else:
            check(answer["content"], f"a random model's chat: {answer}")

        completion = {"model": "", "prompt": "The weather in Paris", "max_tokens": 24, "temperature": 0}
        answer = compare_completion(client, **completion, logprobs=3)
        tokens = answer["logprobs"]["tokens"]
        check(len(tokens) == answer["usage"]["completion_tokens"], f"a logprob per token: {answer}")
        # A stop string from inside the text: held back, then cut.
        text = answer["text"]
        middle = len(text) // 2
        if len(text) > 4:
            stopped = compare_completion(client, **completion, logprobs=3, stop=[text[middle:middle + 3]])
            check(stopped["text"] == text[:text.index(text[middle:middle + 3])] and stopped["finish_reason"] == "stop",
                  f"stopped completion: {stopped}")
    print("ok")


if __name__ == "__main__":
    main()
