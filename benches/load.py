"""Load benchmark for `safeguard serve` on 127.0.0.1: streams in flight while
requests with long prompts arrive, and a short request's time to first
token (TTFT) behind the three loads that once held it up.

1. STREAMS greedy streams decode (every token an event) while ARRIVALS
   requests of PROMPT_TOKENS prompt tokens arrive GAP seconds apart: the
   inter-token latency (ITL) of the streams while the arrivals are admitted
   (p50, p99, max), each arrival's TTFT, and tokens/s of everything.
2. A short streamed request's TTFT when the server is idle, and sent HOLD
   seconds after (a) a request with a LONG_TOKENS prompt, (b) the same
   request whose client then left, (c) a /v1/classify call of CLASSIFY_ITEMS
   items.

usage: load.py MODEL_DIR BINARY [LABEL]   (sizes via env, see SIZES below)
Prints a table and one JSON line (`load: {...}`) for the README.
"""

import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

SIZES = {
    "STREAMS": 3,
    "ARRIVALS": 2,
    "PROMPT_TOKENS": 512,
    "GAP": 1.0,
    "LONG_TOKENS": 1024,
    "CLASSIFY_ITEMS": 32,
    "CLASSIFY_MAX_TOKENS": 8,
    "HOLD": 1.0,
    # The streams run until the test stops them; their budget must fit the
    # server's context (serve may pick a shorter one than the model's).
    "STREAM_MAX_TOKENS": 2048,
}


def size(name):
    kind = type(SIZES[name])
    return kind(os.environ.get(f"LOAD_{name}", SIZES[name]))


class Server:
    def __init__(self, binary, model, extra):
        args = [binary, "serve", "-m", model, "--port", "0", "--queue", "512", *extra]
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        for line in self.process.stderr:
            found = re.search(r"serving on http://([^/\s]+)", line)
            if found:
                self.host, port = found.group(1).rsplit(":", 1)
                self.port = int(port)
                break
        else:
            sys.exit(f"{binary} serve ended before serving")
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=3600)

    def post(self, path, body):
        conn = self.connect()
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        conn.close()
        return reply.status, data

    def health(self):
        conn = self.connect()
        conn.request("GET", "/health")
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data

    def wait_idle(self):
        while True:
            h = self.health()
            if h["requests"] == 0 and h["decoding"] == 0:
                return
            time.sleep(0.05)

    def stream(self, body, events, stop=None):
        """Appends the time of every event of a streamed completion to `events`."""
        conn = self.connect()
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                     {"Content-Type": "application/json"})
        reply = conn.getresponse()
        if reply.status != 200:
            sys.exit(f"a streamed completion was refused ({reply.status}): {reply.read().decode()[:300]}")
        while stop is None or not stop.is_set():
            line = reply.readline()
            if not line or line.startswith(b"data: [DONE]"):
                break
            if line.startswith(b"data: {"):
                events.append(time.perf_counter())
        conn.close()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def ids(n, seed):
    return [1000 + (i * 7919 + seed * 104729) % 100000 for i in range(n)]


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def streams_and_arrivals(server):
    n, arrivals, prompt, gap = size("STREAMS"), size("ARRIVALS"), size("PROMPT_TOKENS"), size("GAP")
    stop = threading.Event()
    streams = [[] for _ in range(n)]
    threads = [
        threading.Thread(target=server.stream, args=(
            {"prompt": f"Once upon a time {i}", "max_tokens": size("STREAM_MAX_TOKENS"), "logprobs": 0,
             "temperature": 0},
            streams[i], stop))
        for i in range(n)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    while any(len(s) < 3 for s in streams):
        if not all(t.is_alive() for t in threads):
            sys.exit("a stream ended before its third token (see the server's answer above)")
        time.sleep(0.01)
    sent, firsts, arrival_tokens = {}, [], []

    def arrive(i):
        events = []
        sent[i] = time.perf_counter()
        server.stream({"prompt": ids(prompt, i), "max_tokens": 4, "logprobs": 0, "temperature": 0}, events)
        firsts.append(events[0] - sent[i] if events else float("nan"))
        arrival_tokens.append(len(events))

    arrivers = []
    for i in range(arrivals):
        t = threading.Thread(target=arrive, args=(i,))
        t.start()
        arrivers.append(t)
        t.join(gap)
    for t in arrivers:
        t.join()
    window = (sent[0], time.perf_counter())
    # A few more tokens after the admissions, then the streams are dropped.
    counts = [len(s) for s in streams]
    while any(len(s) < c + 2 for s, c in zip(streams, counts)):
        time.sleep(0.01)
    stop.set()
    end = time.perf_counter()
    for t in threads:
        t.join(60)
    gaps = [b - a for s in streams for a, b in zip(s, s[1:]) if window[0] <= b <= window[1]]
    tokens = sum(len(s) for s in streams) + sum(arrival_tokens)
    return {
        "itl_p50_ms": 1e3 * percentile(gaps, 50),
        "itl_p99_ms": 1e3 * percentile(gaps, 99),
        "itl_max_ms": 1e3 * max(gaps, default=float("nan")),
        "stream_tokens_during_admission": len(gaps),
        "arrival_ttft_s": [round(f, 2) for f in firsts],
        "tokens_per_s": tokens / (end - start),
    }


def short_ttft(server):
    events = []
    sent = time.perf_counter()
    server.stream({"prompt": "Hi", "max_tokens": 2, "logprobs": 0, "temperature": 0}, events)
    return events[0] - sent


def behind(server, load):
    """A short request's TTFT, sent HOLD s after `load` started."""
    server.wait_idle()
    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(size("HOLD"))
    ttft = short_ttft(server)
    thread.join()
    return ttft


def short_requests(server):
    long_body = {"prompt": ids(size("LONG_TOKENS"), 7), "max_tokens": 1}
    server.wait_idle()
    idle = short_ttft(server)

    def long_prompt():
        server.post("/v1/completions", long_body)

    def departed():
        # The client sends the request and leaves before any answer.
        payload = json.dumps(long_body).encode()
        s = socket.create_connection((server.host, server.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: " + server.host.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        time.sleep(size("HOLD") / 2)
        s.close()

    def classify():
        items = [f"Message number {i}: meet me at the station at noon." for i in range(size("CLASSIFY_ITEMS"))]
        server.post("/v1/classify", {"policy": "spam", "input": items, "effort": "low",
                                     "max_tokens": size("CLASSIFY_MAX_TOKENS")})

    return {
        "short_ttft_idle_s": idle,
        "short_ttft_behind_long_prompt_s": behind(server, long_prompt),
        "short_ttft_behind_departed_prompt_s": behind(server, departed),
        "short_ttft_behind_classify_s": behind(server, classify),
    }


def main():
    model, binary = sys.argv[1], sys.argv[2]
    label = sys.argv[3] if len(sys.argv) > 3 else binary
    extra = os.environ.get("LOAD_SERVE_ARGS", "").split()
    server = Server(binary, model, ["--max-batch", str(size("STREAMS") + size("ARRIVALS") + 1), *extra])
    try:
        figures = {"label": label, "sizes": {k: size(k) for k in SIZES}, "serve_args": extra}
        figures.update(streams_and_arrivals(server))
        figures.update(short_requests(server))
    finally:
        server.stop()
    figures["load_average"] = os.getloadavg()[0]
    for key, value in figures.items():
        if key not in ("sizes", "label"):
            shown = f"{value:.3f}" if isinstance(value, float) else value
            print(f"{key:40} {shown}")
    print("load: " + json.dumps(figures))


if __name__ == "__main__":
    main()
