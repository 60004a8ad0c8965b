"""A soak of `safeguard serve`: mixed traffic for a while, memory watched.

Starts the server on a model (a fixture by default) and runs CLIENTS threads
that loop over a mix of requests: chat (plain and streamed), raw
completions, Responses streams, classification batches, streams the client
abandons after the first event, and malformed requests. Every 5 s it samples
the server's resident memory (VmRSS) and /health. At the end it prints the
memory after warm-up (the first WARMUP seconds) against the end and the peak,
request counts and latencies, and fails if memory kept growing (more than
GROWTH_LIMIT percent after warm-up) or any request got an unexpected answer.

env: SOAK_SECONDS (300) CLIENTS (8) WARMUP (60) GROWTH_LIMIT (10)
usage: soak.py SAFEGUARD_BIN MODEL_DIR
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time

SECONDS = float(os.environ.get("SOAK_SECONDS", 300))
CLIENTS = int(os.environ.get("CLIENTS", 8))
WARMUP = float(os.environ.get("WARMUP", 60))
GROWTH_LIMIT = float(os.environ.get("GROWTH_LIMIT", 10))


def start_server(binary: str, model: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [binary, "serve", "-m", model, "--port", "0", "--max-batch", "8", "--queue", "64"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in server.stderr:
        found = re.search(r"serving on http://([^/\s]+)", line)
        if found:
            # Keep draining the log so the server never blocks on it.
            threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
            return server, found.group(1)
    raise SystemExit("the server did not start")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Soak:
    def __init__(self, address: str):
        self.host, self.port = address.rsplit(":", 1)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.latencies: dict[str, list[float]] = {}
        self.failures: list[str] = []

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, int(self.port), timeout=300)

    def post(self, path: str, body) -> tuple[int, bytes]:
        conn = self.connection()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        return response.status, payload

    def record(self, kind: str, started: float, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.latencies.setdefault(kind, []).append(time.monotonic() - started)
            if not ok:
                self.failures.append(f"{kind}: {detail[:300]}")

    def one(self, rng: random.Random) -> None:
        kind = rng.choice(["chat", "chat-stream", "completion", "responses-stream", "classify", "abandon", "malformed"])
        text = f"Message {rng.randrange(10**6)}: is this spam? Win a prize at example.com"
        chat = {"messages": [{"role": "system", "content": "# Spam\nAnswer 1 for spam, else 0."},
                             {"role": "user", "content": text}], "max_tokens": rng.randrange(4, 48)}
        started = time.monotonic()
        if kind == "chat":
            status, body = self.post("/v1/chat/completions", chat)
            ok = status == 200 and json.loads(body)["choices"][0]["finish_reason"] in ("stop", "length")
        elif kind == "chat-stream":
            status, body = self.post("/v1/chat/completions", {**chat, "stream": True})
            ok = status == 200 and body.rstrip().endswith(b"data: [DONE]")
        elif kind == "completion":
            status, body = self.post("/v1/completions", {"prompt": text, "max_tokens": rng.randrange(4, 48)})
            ok = status == 200 and "text" in json.loads(body)["choices"][0]
        elif kind == "responses-stream":
            status, body = self.post("/v1/responses", {"input": text, "max_output_tokens": 24, "stream": True})
            ok = status == 200 and (b"response.completed" in body or b"response.incomplete" in body)
        elif kind == "classify":
            items = [f"{text} #{i}" for i in range(rng.randrange(1, 5))]
            status, body = self.post("/v1/classify", {"policy": "spam", "input": items, "max_tokens": 24})
            ok = status == 200 and len(json.loads(body)["results"]) == len(items)
        elif kind == "abandon":
            conn = self.connection()
            conn.request("POST", "/v1/completions",
                         json.dumps({"prompt": text, "max_tokens": 5000, "stream": True}).encode(),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            status, body = response.status, response.fp.readline()
            conn.close()  # gone after the first event
            ok = status == 200
        else:
            status, body = self.post("/v1/chat/completions", b"{\"messages\": [")
            ok = status == 400 and b"\"error\"" in body
        if status == 503:
            ok = True  # the bounded queue doing its job
        self.record(kind, started, ok, f"{status} {body[:200]!r}")

    def client(self, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            try:
                self.one(rng)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.record("exception", time.monotonic(), False, repr(e))


def main() -> None:
    binary, model = sys.argv[1], sys.argv[2]
    server, address = start_server(binary, model)
    soak = Soak(address)
    start = time.monotonic()
    deadline = start + SECONDS
    threads = [threading.Thread(target=soak.client, args=(i, deadline)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    samples = []
    while time.monotonic() < deadline:
        samples.append((time.monotonic() - start, rss_bytes(server.pid)))
        time.sleep(5)
    for t in threads:
        t.join()
    samples.append((time.monotonic() - start, rss_bytes(server.pid)))
    conn = soak.connection()
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    server.terminate()
    server.wait(timeout=60)

    after = [rss for t, rss in samples if t >= WARMUP] or [samples[-1][1]]
    warm, final, peak = after[0], after[-1], max(after)
    growth = 100.0 * (final - warm) / warm
    mib = 1 << 20
    print(f"soak: {SECONDS:.0f} s, {CLIENTS} clients, model {model}")
    print(f"{'request':<18}{'count':>7}{'p50 ms':>10}{'p95 ms':>10}")
    for kind in sorted(soak.counts):
        lat = sorted(soak.latencies[kind])
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(f"{kind:<18}{soak.counts[kind]:>7}{statistics.median(lat) * 1e3:>10.0f}{p95 * 1e3:>10.0f}")
    print(f"memory (RSS): after {WARMUP:.0f} s warm-up {warm / mib:.1f} MiB, end {final / mib:.1f} MiB, "
          f"peak {peak / mib:.1f} MiB, growth {growth:+.1f}%")
    print("rss samples (s, MiB):", " ".join(f"{t:.0f}:{rss / mib:.0f}" for t, rss in samples))
    print(f"health at the end: {health}")
    for failure in soak.failures[:10]:
        print("FAILED", failure)
    idle = health["requests"] == 0 and health["decoding"] == 0
    if soak.failures or growth > GROWTH_LIMIT or not idle:
        sys.exit(1)


if __name__ == "__main__":
    main()
