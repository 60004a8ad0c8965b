"""The official `openai` Python SDK against `safeguard serve`, for tests/server.rs.

Usage: server_client.py BASE_URL EXPECTED_JSON

The server runs the scripted fixture, whose answer to any chat is known
(EXPECTED_JSON, written by the fixture generator from the weights): the
final channel holds "1" and generation stops at <|return|>. Every check
raises on failure; the last line printed is "ok".
"""

from __future__ import annotations

import json
import math
import sys

import openai

# What OpenAI documents for a streamed Responses answer without tool calls
# (one message, no reasoning: the scripted model writes none).
RESPONSE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def main() -> None:
    base_url, expected_path = sys.argv[1], sys.argv[2]
    expected = json.load(open(expected_path))
    answer = expected["answer"]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

    models = client.models.list().data
    check(len(models) == 1 and models[0].object == "model", f"models: {models}")
    model = models[0].id
    policy = "# Spam\nAnswer 1 if the content is spam, else 0."
    messages = [
        {"role": "system", "content": policy},
        {"role": "user", "content": "Buy cheap watches now!!!"},
    ]

    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=64)
    choice = chat.choices[0]
    check(choice.message.content == answer, f"chat content {choice.message.content!r}")
    check(choice.finish_reason == "stop", f"chat finish {choice.finish_reason}")
    check(chat.usage.completion_tokens == len(expected["completion"]), f"chat usage {chat.usage}")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "total")

    # Log-probabilities of the answer's tokens: at the verdict "1" beats "0" by
    # the logit gap built into the weights, so P(1) / (P(0) + P(1)) is the
    # fixture's float64 confidence.
    scored = client.chat.completions.create(model=model, messages=messages, max_tokens=64,
                                            logprobs=True, top_logprobs=2)
    content = scored.choices[0].logprobs.content
    check([c.token for c in content] == [answer], f"logprob tokens {content}")
    top = {t.token: t.logprob for t in content[0].top_logprobs}
    check(set(top) == {"0", "1"}, f"top logprobs {top}")
    confidence = math.exp(top["1"]) / (math.exp(top["0"]) + math.exp(top["1"]))
    check(abs(confidence - expected["confidence"]) < 1e-5, f"confidence {confidence}")
    check(content[0].logprob == top["1"] and content[0].bytes == list(answer.encode()), f"{content[0]}")

    # The same chat again: the system message's tokens come from the prefix cache.
    again = client.chat.completions.create(model=model, messages=messages, max_tokens=64)
    check(again.choices[0].message.content == answer, "repeated chat")
    cached = again.usage.prompt_tokens_details.cached_tokens
    check(0 < cached < again.usage.prompt_tokens, f"cached tokens {cached}")
    check(again._request_id and again._request_id.startswith("req_"), f"request id {again._request_id!r}")

    # Streamed, with usage.
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            reasoning_effort="low",
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == answer, f"streamed content {text!r}")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["stop"], f"stream finish {finishes}")
    check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected["completion"]),
          f"usage chunk {chunks[-1]}")
    # The effort is in the system message, so low effort starts a prompt of its
    # own (nothing cached) that `reasoning: {effort}` then shares.
    check(chunks[-1].usage.prompt_tokens_details.cached_tokens == 0, "low effort reused medium's prefix")
    low = client.chat.completions.create(model=model, messages=messages, max_tokens=64,
                                         extra_body={"reasoning": {"effort": "low"}})
    check(low.usage.prompt_tokens_details.cached_tokens > 0, f"reasoning.effort ignored: {low.usage}")

    # The token limit: two tokens cannot reach the answer.
    short = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=2)
    check(short.choices[0].finish_reason == "length", f"limit finish {short.choices[0].finish_reason}")
    check(short.usage.completion_tokens == 2, f"limit usage {short.usage}")

    # Responses, plain and streamed.
    response = client.responses.create(model=model, instructions=policy, input="Buy cheap watches now!!!",
                                       reasoning={"effort": "low"})
    check(response.status == "completed", f"response status {response.status}")
    check(response.output_text == answer, f"response text {response.output_text!r}")
    check(response.usage.output_tokens == len(expected["completion"]), f"response usage {response.usage}")
    check(response.reasoning.effort == "low", f"response effort {response.reasoning}")

    events = list(client.responses.create(model=model, input=[{"role": "user", "content": "hello"}], stream=True))
    kinds = [e.type for e in events]
    check(kinds == RESPONSE_EVENTS, f"response events {kinds}")
    check([e.sequence_number for e in events] == list(range(len(events))), "sequence numbers")
    delta = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    check(delta == answer, f"streamed response text {delta!r}")
    check(events[-1].response.output_text == answer, "completed response")

    cut = client.responses.create(model=model, input="hello", max_output_tokens=2)
    check(cut.status == "incomplete", f"cut status {cut.status}")
    check(cut.incomplete_details.reason == "max_output_tokens", f"cut details {cut.incomplete_details}")

    # Errors reach the SDK as its typed exceptions, with the server's message.
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        check("no-such-model" in str(e), f"404 message {e}")
    try:
        client.chat.completions.create(model=model, messages=messages, temperature=7)
        raise AssertionError("temperature 7 accepted")
    except openai.BadRequestError as e:
        check(e.body["param"] == "temperature", f"400 body {e.body}")

    print("ok")


if __name__ == "__main__":
    main()
