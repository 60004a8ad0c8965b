"""The official `openai` Python SDK against rank 0 of a split `safeguard serve`, for
tests/distributed_serve.rs.

Usage: distributed_serve_client.py SPLIT_BASE_URL SINGLE_BASE_URL

Both servers run the same fixture greedily in float32, one split across ranks, one
in a single process. Every call (a streamed chat, a Responses call, /v1/classify
through the SDK's generic post, and 16 completions sent at once) goes to both, and
the answers must be the same: equal text and tokens, log-probabilities and
confidences within 1e-4 (the ranks' sums add in another order). Every check raises
on failure; the last line printed is "ok".
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor

import openai

# Fields that name or time a call rather than say what the model answered.
VOLATILE = {"id", "created", "created_at", "system_fingerprint", "request_id", "latency_ms"}
TOLERANCE = 1e-4


def same(a, b, where: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (a.keys() | b.keys()) - VOLATILE
        for key in sorted(keys):
            if key not in a or key not in b:
                raise AssertionError(f"{where}.{key}: present on one server only: {a.get(key)!r} vs {b.get(key)!r}")
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise AssertionError(f"{where}: {len(a)} vs {len(b)} entries: {a!r} vs {b!r}")
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if not (math.isclose(a, b, abs_tol=TOLERANCE) or (math.isinf(a) and a == b)):
            raise AssertionError(f"{where}: {a} vs {b}")
    elif a != b:
        raise AssertionError(f"{where}: {a!r} vs {b!r}")


def chat_stream(client: openai.OpenAI, model: str) -> list:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    chunks = [chunk.model_dump() for chunk in stream]
    if not chunks or chunks[-1]["choices"][0]["finish_reason"] != "length":
        raise AssertionError(f"the stream did not end at its 12 tokens: {chunks[-1:]!r}")
    return chunks


def responses(client: openai.OpenAI, model: str) -> dict:
    response = client.responses.create(
        model=model,
        instructions="Answer briefly.",
        input="Is this spam? BUY CHEAP WATCHES",
        max_output_tokens=10,
        temperature=0,
    )
    return response.model_dump()


def classify(client: openai.OpenAI, model: str) -> dict:
    body = {
        "model": model,
        "policy": "spam",
        "effort": "low",
        "input": ["Buy now!", {"id": "b", "content": "See you at lunch."}],
    }
    return client.post("/classify", body=body, cast_to=object)


def completion(client: openai.OpenAI, model: str, i: int) -> dict:
    response = client.completions.create(
        model=model,
        prompt=f"Item number {i} says",
        max_tokens=3 + i % 5,
        temperature=0,
        logprobs=(1 + i % 3) if i % 2 == 0 else None,
    )
    return response.choices[0].model_dump()


def main() -> None:
    split, single = (openai.OpenAI(base_url=url, api_key="unused", max_retries=0) for url in sys.argv[1:3])
    model = split.models.list().data[0].id
    same(chat_stream(split, model), chat_stream(single, model), "chat stream")
    same(responses(split, model), responses(single, model), "responses")
    same(classify(split, model), classify(single, model), "classify")
    alone = [completion(single, model, i) for i in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda i: completion(split, model, i), range(16)))
    for i, (a, b) in enumerate(zip(together, alone)):
        same(a, b, f"completion {i}")
    print("ok")


if __name__ == "__main__":
    main()
