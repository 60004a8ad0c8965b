"""The policy playground of `safeguard serve`, against servers on the scripted fixtures.

    web_playground.py api|browser --bin SAFEGUARD --fixtures DIR --out DIR

`api` drives the HTTP API with the standard library; `browser` drives the page (and the
HTML report of `safeguard eval --report`) in Debian's chromium through Playwright. The
references are independent of the server: `safeguard eval --json` and `safeguard policies
lint --json` run as separate processes, counts and metrics recomputed here from the gold
labels and the probability the scripted fixture's weights give (its expected.json),
McNemar's p from scipy, sha256 from hashlib. Screenshots go to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright
from scipy.stats import binomtest

KEY = "s3cret-key"

# A policy that lint passes on its parts, with markup in its title (shown as text, never run).
POLICY = """# Test Spam Policy <img src=x onerror=alert('policy')> </script>

## INSTRUCTIONS
Decide whether the content is spam. Return 1 if it violates, 0 if it does not.

## DEFINITIONS
Spam: unsolicited advertising sent in bulk.

## VIOLATES (1)
- Advertising for pills, loans or prizes the reader did not ask for.

## DOES NOT VIOLATE (0)
- Messages between people who know each other.

## EXAMPLES
Content: buy cheap pills now
Answer: 1

Content: see you at lunch
Answer: 0

Return 1 if the content violates, 0 if it does not.
"""

# The same policy, but its answer "1" now means "a person decides": every answer escalates.
POLICY_V2 = "---\nescalate: 1\n---\n" + POLICY

HEDGED = """# Vague Policy

## INSTRUCTIONS
Return 1 if the content is spam, else 0.

## VIOLATES (1)
- Content that usually looks like an advert.
"""

XSS = "<img src=x onerror=alert('content')> </script><script>alert('content2')</script>"


def labelled_set(n: int = 20) -> list[dict]:
    rows = []
    for i in range(n):
        spam = i % 3 == 0
        text = f"item {i}: " + ("buy cheap pills now" if spam else "see you at lunch")
        if i == 4:
            text += " " + XSS
        rows.append({"id": f"e{i:02d}", "text": text, "label": int(spam)})
    return rows


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def fail(message: str) -> None:
    raise AssertionError(message)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


# ---- servers and HTTP ----


class Server:
    def __init__(self, binary: str, model: pathlib.Path, *args: str):
        # A folder of its own, so that a write beside --policies-dir would show.
        self.policies = str(pathlib.Path(tempfile.mkdtemp(prefix="safeguard-web-")) / "policies")
        self.process = subprocess.Popen(
            [binary, "serve", "-m", str(model), "--port", "0", "--policies-dir", self.policies, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        found = threading.Event()
        self.address = None

        def read() -> None:
            for line in self.process.stderr:
                if "serving on http://" in line and self.address is None:
                    self.address = line.split("serving on http://")[1].strip().removesuffix("/v1")
                    found.set()
                sys.stderr.write("[server] " + line)

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120):
            self.stop()
            fail(f"the server on {model} did not announce its address within 120 s")

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def http(method: str, url: str, body=None, key: str | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def ok(method: str, url: str, body=None, status: int = 200, key: str | None = None):
    code, _, text = http(method, url, body, key)
    check(code == status, f"{method} {url}: expected {status}, got {code}: {text}")
    return json.loads(text)


def sse(method: str, url: str, body=None, stop_after: int | None = None) -> list:
    """The `data:` events of a stream, as JSON, until it ends (or `stop_after` of them)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    events = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            events.append(json.loads(payload))
            if stop_after is not None and len(events) >= stop_after:
                break
    return events


def cli(binary: str, *args: str, cwd: str | None = None) -> str:
    run = subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    check(run.returncode == 0, f"safeguard {' '.join(args)} exited {run.returncode}: {run.stderr}")
    return run.stdout


def wait_idle(server: Server, within: float = 30.0) -> None:
    start = time.monotonic()
    while True:
        health = ok("GET", server.url("/health"))
        if health["requests"] == 0 and health["decoding"] == 0:
            return
        check(time.monotonic() - start < within, f"still busy after {within} s: {health}")
        time.sleep(0.05)


def precision_recall(rows: list[dict], p: float, threshold: float):
    """Flagged when P(violation) >= threshold; every item has probability `p` here."""
    tp = sum(1 for r in rows if p >= threshold and r["label"] == 1)
    fp = sum(1 for r in rows if p >= threshold and r["label"] == 0)
    fn = sum(1 for r in rows if p < threshold and r["label"] == 1)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return precision, recall


def shown(x) -> str:
    return "—" if x is None else f"{x:.3f}"


class Reference:
    """`safeguard eval --json` on the scripted fixture, run apart from any server."""

    def __init__(self, args, work: pathlib.Path):
        self.rows = labelled_set()
        self.set = work / "set.jsonl"
        self.set.write_text(jsonl(self.rows))
        (work / "policy.md").write_text(POLICY)
        (work / "policy-v2.md").write_text(POLICY_V2)
        model = str(args.fixtures / "scripted")
        common = ["eval", "-m", model, "--input", str(self.set), "--json", "--no-cache"]
        self.v1_file = work / "v1.json"
        self.v1 = json.loads(cli(args.bin, *common, "--policy", str(work / "policy.md"), "--report", str(work / "report.html")))
        self.v1_file.write_text(json.dumps(self.v1))
        self.report = work / "report.html"
        self.v2 = json.loads(cli(args.bin, *common, "--policy", str(work / "policy-v2.md"), "--baseline", str(self.v1_file)))
        self.confidence = json.loads((args.fixtures / "scripted" / "expected.json").read_text())["confidence"]
        self.gold1 = sorted(r["id"] for r in self.rows if r["label"] == 1)
        self.gold0 = sorted(r["id"] for r in self.rows if r["label"] == 0)


# ---- the API ----


def api(args) -> None:
    work = pathlib.Path(tempfile.mkdtemp(prefix="safeguard-web-api-"))
    ref = Reference(args, work)
    # What the scripted model answers (1 to everything) decides the matrix, before any server.
    c = ref.v1["metrics"]["confusion"]
    check((c["tp"], c["fp"], c["tn"], c["fn"]) == (len(ref.gold1), len(ref.gold0), 0, 0), f"eval --json confusion {c}")
    server = Server(args.bin, args.fixtures / "scripted")
    reasoning_server = Server(args.bin, args.fixtures / "scripted-reasoning")
    keyed = Server(args.bin, args.fixtures / "scripted", "--api-key", KEY, "--cors", "http://app.local")
    try:
        page_and_headers(server)
        lint(args, server, work)
        policies(server)
        trying(server, reasoning_server, args)
        evals(server, ref, work)
        auth(keyed)
    finally:
        for s in (server, reasoning_server, keyed):
            s.stop()
    print("api: all checks passed")


def page_and_headers(server: Server) -> None:
    total = 0
    for path, kind in [("/", "text/html"), ("/assets/app.js", "text/javascript"), ("/assets/app.css", "text/css")]:
        code, headers, body = http("GET", server.url(path))
        check(code == 200, f"GET {path}: {code}")
        lower = {k.lower(): v for k, v in headers.items()}
        check(lower["content-type"].startswith(kind), f"{path} is served as {lower['content-type']}")
        check(lower.get("x-content-type-options") == "nosniff", f"{path} lacks nosniff: {lower}")
        csp = lower.get("content-security-policy", "")
        check("script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp, f"{path}: CSP {csp!r}")
        check("access-control-allow-origin" not in lower, f"{path} sends CORS headers without --cors")
        total += len(body.encode())
    check(total < 300_000, f"the page's first load is {total} bytes, over 300 KB")
    check("<script>" not in http("GET", server.url("/"))[2], "the page has an inline script")
    # Another origin is refused (same-origin by default).
    request = urllib.request.Request(server.url("/v1/policies"), headers={"Origin": "http://evil.example"})
    try:
        urllib.request.urlopen(request, timeout=30)
        fail("a cross-origin request was answered")
    except urllib.error.HTTPError as e:
        check(e.code == 403, f"cross-origin: {e.code}")


def lint(args, server: Server, work: pathlib.Path) -> None:
    path = work / "hedged.md"
    path.write_text(HEDGED)
    run = subprocess.run(
        [args.bin, "policies", "lint", str(path), "--json", "-m", str(args.fixtures / "scripted")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    reference = json.loads(run.stdout)
    got = ok("POST", server.url("/v1/policies/lint"), {"text": HEDGED})
    check(got.pop("declared") is None, "a policy without front matter declares nothing")
    check(got == reference, f"lint over HTTP differs from `policies lint --json`:\n{got}\n{reference}")
    hedge_line = next(i for i, line in enumerate(HEDGED.splitlines(), 1) if "usually" in line)
    rules = {(f["rule"], f["line"]) for f in got["findings"]}
    check(("hedge", hedge_line) in rules, f"no hedge finding at line {hedge_line}: {rules}")
    check(any(r == "examples" for r, _ in rules), f"no examples finding: {rules}")
    declared = ok("POST", server.url("/v1/policies/lint"), {"text": POLICY_V2})["declared"]
    check(declared["escalate"] == ["1"], f"declared: {declared}")
    code, _, body = http("POST", server.url("/v1/policies/lint"), {"text": "---\nbogus: 1\n---\nx"})
    check(code == 400 and "line 2" in body, f"bad front matter: {code} {body}")


def policies(server: Server) -> None:
    base = server.url("/v1/policies/")
    first = ok("PUT", base + "web-test", {"text": POLICY}, status=201)
    check(first["version"]["version"] == 1, f"{first}")
    check(first["version"]["sha256"] == hashlib.sha256(POLICY.encode()).hexdigest(), "sha256 of the saved text")
    same = ok("PUT", base + "web-test", {"text": POLICY})
    check(not same["created"] and same["version"]["version"] == 1, f"an unchanged save is no new version: {same}")
    second = ok("PUT", base + "web-test", {"text": POLICY_V2}, status=201)
    check(second["version"]["version"] == 2, f"{second}")
    versions = ok("GET", base + "web-test/versions")["versions"]
    check([v["version"] for v in versions] == [1, 2], f"{versions}")
    check(ok("GET", base + "web-test/versions/1")["text"] == POLICY, "version 1's text")
    latest = ok("GET", base + "web-test")
    check(latest["text"] == POLICY_V2 and latest["kind"] == "saved", f"{latest}")
    check((pathlib.Path(server.policies) / "web-test" / "v2.md").read_text() == POLICY_V2, "v2.md on disk")
    listed = ok("GET", server.url("/v1/policies"))
    check([p["name"] for p in listed["saved"]] == ["web-test"], f"{listed['saved']}")
    check(ok("GET", base + "spam")["kind"] == "shipped", "a shipped policy opens")
    outside = pathlib.Path(server.policies).parent
    before = set(outside.rglob("*"))
    for bad in ["..%2Fescape", "%2E%2E", ".hidden", "a%20b", "x" * 65, "a.md"]:
        code, _, body = http("PUT", base + bad, {"text": POLICY})
        check(code == 400 and "policy name" in body, f"PUT {bad}: {code} {body}")
    check(set(outside.rglob("*")) == before, "a bad name wrote a file")
    code, _, body = http("PUT", base + "x", {"text": "---\nbogus: 1\n---\n"})
    check(code == 400, f"an unreadable policy is not saved: {code} {body}")
    ok("DELETE", base + "web-test")
    check(http("GET", base + "web-test")[0] == 404, "deleted")
    check(http("DELETE", base + "web-test")[0] == 404, "deleted twice")


def trying(server: Server, reasoning_server: Server, args) -> None:
    confidence = json.loads((args.fixtures / "scripted" / "expected.json").read_text())["confidence"]
    events = sse("POST", server.url("/v1/try"), {
        "policy": POLICY,
        "input": [{"text": XSS}, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
    })
    results = [e["result"] for e in events if e["type"] == "result"]
    check(len(results) == 2, f"{events}")
    for r in results:
        check(r["label"] == 1 and r["outcome"] == "violates", f"{r}")
        check(abs(r["p_violation"] - confidence) < 1e-5, f"P(violation) {r['p_violation']} != {confidence}")
    expected = json.loads((args.fixtures / "scripted-reasoning" / "expected.json").read_text())
    events = sse("POST", reasoning_server.url("/v1/try"), {"policy": POLICY, "input": [{"text": "hello"}]})
    pieces = [e["text"] for e in events if e["type"] == "reasoning"]
    check(len(pieces) > 1, f"the reasoning came in {len(pieces)} piece(s)")
    check("".join(pieces) == expected["reasoning"], f"streamed reasoning {''.join(pieces)!r}")
    result = next(e["result"] for e in events if e["type"] == "result")
    check(result["reasoning"] == expected["reasoning"] and result["label"] is None, f"{result}")
    code, _, body = http("POST", server.url("/v1/try"), {"policy": POLICY, "input": []})
    check(code == 400 and "input" in body, f"empty input: {code} {body}")
    code, _, body = http("POST", server.url("/v1/try"), {"policy": POLICY, "input": [{"nope": 1}]})
    check(code == 400 and "input[0]" in body, f"bad item: {code} {body}")


def run_eval(server: Server, body: dict) -> tuple[str, list]:
    started = ok("POST", server.url("/v1/evals"), body, status=202)
    events = sse("GET", server.url(started["events"]))
    return started["id"], events


def evals(server: Server, ref: Reference, work: pathlib.Path) -> None:
    body = {"policy": POLICY, "policy_name": "policy", "set": jsonl(ref.rows), "set_name": "set.jsonl"}
    first, events = run_eval(server, body)
    running = [e for e in events if e["status"] == "running"]
    check(events[-1]["status"] == "done", f"last event {events[-1]}")
    check(len(running) >= 2 and [e["done"] for e in running] == sorted(e["done"] for e in running), f"progress {running}")
    # Progress is a watch: a slow reader sees the latest count, not every one.
    check(0 < running[-1]["done"] <= len(ref.rows) and running[-1]["total"] == len(ref.rows), f"{running[-1]}")
    got = ok("GET", server.url(f"/v1/evals/{first}"))
    check(got["metrics"] == ref.v1["metrics"], "the API's metrics differ from `safeguard eval --json`")
    strip = lambda ms: [(m["id"], m["kind"], m["predicted"], m["p_violation"]) for m in ms]  # noqa: E731
    check(strip(got["mistakes"]) == strip(ref.v1["mistakes"]), "mistakes differ from `safeguard eval --json`")
    check(got["manifest"]["dataset"]["sha256"] == ref.v1["manifest"]["dataset"]["sha256"], "the set's sha256")
    check(got["manifest"]["policy"]["sha256"] == ref.v1["manifest"]["policy"]["sha256"], "the policy's sha256")
    check(got["lint"] == ref.v1["lint"], "lint in the run")
    items = ok("GET", server.url(f"/v1/evals/{first}/items"))["items"]
    check([i["id"] for i in items] == [r["id"] for r in ref.rows], "items in set order")
    check(all(abs(i["p_violation"] - ref.confidence) < 1e-5 for i in items), "every item's P(violation)")
    check(items[4]["text"] == ref.rows[4]["text"], "items keep their full text")

    # The same set as CSV scores the same.
    csv = "id,text,label\n" + "".join(f'{r["id"]},"{r["text"].replace(chr(34), chr(34) * 2)}",{r["label"]}\n' for r in ref.rows)
    as_csv, _ = run_eval(server, {**body, "set": csv, "set_name": "set.csv"})
    check(ok("GET", server.url(f"/v1/evals/{as_csv}"))["metrics"] == ref.v1["metrics"], "CSV and JSONL differ")

    # The second version against the first: every violating example breaks (its answer now
    # escalates), as `safeguard eval --baseline` finds too.
    second, _ = run_eval(server, {**body, "policy": POLICY_V2, "baseline": first})
    comparison = ok("GET", server.url(f"/v1/evals/{second}"))["comparison"]
    broken = sorted(f["id"] for f in comparison["broken"])
    check(broken == ref.gold1 and comparison["fixed"] == [], f"flips: broken {broken}, fixed {comparison['fixed']}")
    cli_comparison = ref.v2["comparison"]
    check(broken == sorted(f["id"] for f in cli_comparison["broken"]), "flips differ from `eval --baseline`")
    p = binomtest(0, len(ref.gold1), 0.5).pvalue
    check(abs(comparison["mcnemar_p"] - p) < 1e-12, f"McNemar p {comparison['mcnemar_p']} != scipy {p}")
    code, _, text = http("POST", server.url("/v1/evals"), {**body, "set": csv, "set_name": "set.csv", "baseline": first})
    check(code == 400 and "another labelled set" in text, f"baseline on another set: {code} {text}")

    # Bad rows are reported as FILE:LINE before anything runs.
    bad = jsonl(ref.rows[:2]) + '{"id": "x", "text": "t", "label": "maybe"}\n'
    code, _, text = http("POST", server.url("/v1/evals"), {**body, "set": bad})
    check(code == 400 and "set.jsonl:3:" in text, f"bad row: {code} {text}")

    code, headers, page = http("GET", server.url(f"/v1/evals/{first}/report"))
    lower = {k.lower(): v for k, v in headers.items()}
    check(code == 200 and "attachment" in lower["content-disposition"] and 'id="pr-curve"' in page, "the HTML report")

    # Cancel: a long run stops, its generations end, and it is forgotten.
    many = [{"id": f"m{i}", "text": f"message number {i}", "label": i % 2} for i in range(400)]
    started = ok("POST", server.url("/v1/evals"), {**body, "set": jsonl(many)}, status=202)
    sse("GET", server.url(started["events"]), stop_after=2)
    cancelled = ok("DELETE", server.url(f"/v1/evals/{started['id']}"))
    check(cancelled["cancelled"] is True, f"{cancelled}")
    check(http("GET", server.url(f"/v1/evals/{started['id']}"))[0] == 404, "a cancelled eval is forgotten")
    wait_idle(server)


def auth(keyed: Server) -> None:
    check(http("GET", keyed.url("/"))[0] == 200, "the page itself needs no key")
    check(http("GET", keyed.url("/assets/app.js"))[0] == 200, "nor do its files")
    for method, path, body in [("GET", "/v1/policies", None), ("POST", "/v1/policies/lint", {"text": "x"}),
                               ("POST", "/v1/evals", {"policy": "spam"}), ("PUT", "/v1/policies/a", {"text": "x"})]:
        code, _, text = http(method, keyed.url(path), body)
        check(code == 401, f"{method} {path} without the key: {code} {text}")
    ok("GET", keyed.url("/v1/policies"), key=KEY)
    # With --cors, another origin's page may save and delete policies too.
    preflight = urllib.request.Request(keyed.url("/v1/policies/a"), method="OPTIONS", headers={
        "Origin": "http://app.local", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization,content-type"})
    with urllib.request.urlopen(preflight, timeout=30) as response:
        methods = response.headers["access-control-allow-methods"]
    check("PUT" in methods and "DELETE" in methods, f"CORS preflight allows {methods}")


# ---- the page in a browser ----


class Page:
    """A chromium page that records console errors, dialogs and every request."""

    def __init__(self, browser, width: int = 1280, height: int = 900, scheme: str = "light"):
        self.context = browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=True, color_scheme=scheme
        )
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.outside: list[str] = []

        def route(r):
            url = r.request.url
            self.requests.append(url)
            if url.startswith(("http://127.0.0.1", "blob:", "data:", "file:")):
                r.continue_()
            else:
                self.outside.append(url)
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def clean(self, what: str, allow: str | None = None) -> None:
        errors = [e for e in self.errors if not (allow and allow in e)]
        check(not errors, f"{what}: console errors {errors}")
        check(not self.dialogs, f"{what}: dialogs opened (script ran): {self.dialogs}")
        check(not self.outside, f"{what}: requests left 127.0.0.1: {self.outside}")

    def close(self) -> None:
        self.context.close()


def text(page, selector: str) -> str:
    return page.locator(selector).text_content()


def open_page(page, server: Server) -> None:
    page.goto(server.url("/"))
    wait_text(page, "#status", "ready", starts=False, timeout=30_000)


def wait_text(page, selector: str, value: str, starts: bool, timeout: int) -> None:
    """Waits for an element's text. Locator assertions, not wait_for_function: the page's
    CSP forbids the string evaluation that one needs, and the tests keep the CSP on."""
    pattern = re.compile("^" + re.escape(value) + ("" if starts else "$"))
    expect(page.locator(selector)).to_have_text(pattern, timeout=timeout)


def tab(page, name: str) -> None:
    page.click(f"#tab-{name}")
    page.wait_for_selector(f"#view-{name}", state="visible")


def screenshot(page, out: pathlib.Path, name: str) -> None:
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def unlabelled_controls(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('button, input, select, textarea')]
        .filter((c) => c.offsetParent !== null)
        .filter((c) => !(c.getAttribute('aria-label') || (c.labels && c.labels.length) || c.textContent.trim()
                         || c.getAttribute('aria-labelledby')))
        .map((c) => c.outerHTML.slice(0, 80))""")


def browser(args) -> None:
    check(args.chromium.is_file(), f"{args.chromium} is missing: run `make setup` (it installs Debian's chromium)")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="safeguard-web-browser-"))
    ref = Reference(args, work)
    server = Server(args.bin, args.fixtures / "scripted")
    reasoning_server = Server(args.bin, args.fixtures / "scripted-reasoning")
    keyed = Server(args.bin, args.fixtures / "scripted", "--api-key", KEY)
    try:
        with sync_playwright() as p:
            # No sandbox: chromium will not start sandboxed as root (CI, containers).
            chromium = p.chromium.launch(executable_path=str(args.chromium), args=["--no-sandbox"])
            try:
                playground(chromium, server, ref, work, out)
                narrow(chromium, server, out)
                reasoning(chromium, reasoning_server, out)
                api_key(chromium, keyed)
                report(chromium, ref, out)
            finally:
                chromium.close()
    finally:
        for s in (server, reasoning_server, keyed):
            s.stop()
    print(f"browser: all checks passed; screenshots in {out}")


def playground(chromium, server: Server, ref: Reference, work: pathlib.Path, out: pathlib.Path) -> None:
    view = Page(chromium)
    page = view.page
    open_page(page, server)
    check(text(page, "#model-name") == "scripted", "the model's name")
    check(not unlabelled_controls(page), f"controls without a label: {unlabelled_controls(page)}")

    # Lint: hedge words at their line, missing examples.
    page.fill("#policy-text", HEDGED)
    page.wait_for_selector("#lint-findings li:has-text('[hedge]')", timeout=15_000)
    findings = page.locator("#lint-findings li").all_text_contents()
    check(any("[examples]" in f for f in findings), f"no examples warning: {findings}")
    check(page.locator("#lint-findings mark").first.text_content().lower() == "usually", "the hedge word is marked")
    screenshot(page, out, "policy-lint-1280")

    # Save, see the version, reload, still there.
    page.fill("#policy-text", POLICY)
    page.fill("#policy-name", "web-test")
    page.click("#policy-save")
    page.wait_for_selector("#versions li[data-version='1']", timeout=15_000)
    page.reload()
    wait_text(page, "#status", "ready", starts=True, timeout=30_000)
    page.wait_for_selector("#versions li[data-version='1']", timeout=15_000)
    check(page.input_value("#policy-text") == POLICY, "the saved policy after a reload")
    check(page.locator("#policy-pick option[value='web-test']").count() == 1, "the saved policy is listed")
    page.fill("#policy-text", POLICY.replace("in bulk", "in bulk to many people"))
    page.click("#versions li[data-version='1'] button:has-text('Diff')")
    expect(page.locator("#diff .add")).to_have_text("+ Spam: unsolicited advertising sent in bulk to many people.")
    expect(page.locator("#diff .del")).to_have_text("- Spam: unsolicited advertising sent in bulk.")
    page.fill("#policy-text", POLICY)
    screenshot(page, out, "policy-1280")

    # Try: the known verdict and probability; content with markup stays text.
    tab(page, "try")
    page.fill("#try-text", XSS)
    page.click("#try-run")
    wait_text(page, "#try-outcome", "violates", starts=False, timeout=30_000)
    check(text(page, "#try-p-text") == f"{ref.confidence:.3f}", f"P(violation) shown {text(page, '#try-p-text')}")
    page.check("#try-many")
    page.fill("#try-text", "one\ntwo <b>bold</b>\nthree")
    page.click("#try-run")
    wait_text(page, "#status", "done: 3 of 3", starts=True, timeout=30_000)
    rows = page.locator("#try-table tbody tr")
    check(rows.count() == 3, "three rows")
    check(rows.nth(1).locator("td").nth(1).text_content() == "two <b>bold</b>", "a row's text is shown as text")
    check(all(rows.nth(i).locator("td").nth(2).text_content() == "violates" for i in range(3)), "each row's verdict")
    screenshot(page, out, "try-1280")
    page.check("input[name='try-mode'][value='conversation']")
    page.fill("#conv input", "hello " + XSS)
    page.click("#try-run")
    wait_text(page, "#status", "done: 1 of 1", starts=True, timeout=30_000)
    check(text(page, "#try-outcome") == "violates", "a conversation's verdict")

    # Evaluate: the 20-item set equals `safeguard eval --json`.
    tab(page, "eval")
    upload = work / "upload.tsv"
    upload.write_text("id\ttext\tlabel\n" + "".join(f"{r['id']}\t{r['text']}\t{r['label']}\n" for r in ref.rows[:3]))
    page.set_input_files("#eval-file", str(upload))
    wait_text(page, "#status", "read upload.tsv", starts=False, timeout=10_000)
    check(page.input_value("#eval-set") == upload.read_text() and page.input_value("#eval-format") == "tsv", "an uploaded set")
    page.select_option("#eval-format", "jsonl")
    page.fill("#eval-set", jsonl(ref.rows))
    page.click("#eval-run")
    wait_text(page, "#status", "eval finished", starts=True, timeout=60_000)
    c = ref.v1["metrics"]["confusion"]
    for cell in ["tp", "fp", "fn", "tn"]:
        check(text(page, f"#cell-{cell}") == str(c[cell]), f"confusion {cell}: page {text(page, f'#cell-{cell}')}, --json {c[cell]}")
    metrics = dict(zip(page.locator("#eval-metrics th").all_text_contents(), page.locator("#eval-metrics td").all_text_contents()))
    for name in ["precision", "recall", "accuracy"]:
        estimate = ref.v1["metrics"][name]
        check(metrics[name].startswith(shown(estimate["value"])), f"{name}: page {metrics[name]}, --json {estimate}")
    page.click("#cell-fp")
    listed = sorted(page.locator("#cell-items li").evaluate_all("(items) => items.map((i) => i.dataset.id)"))
    check(listed == ref.gold0, f"the false-positive cell lists {listed}")

    # The threshold: the slider, then a drag on the strip; values recomputed here.
    for threshold in [0.5, 0.9]:
        page.fill("#eval-threshold", str(threshold))
        precision, recall = precision_recall(ref.rows, ref.confidence, threshold)
        check(text(page, "#thr-precision") == shown(precision) and text(page, "#thr-recall") == shown(recall),
              f"at {threshold}: page {text(page, '#thr-precision')}/{text(page, '#thr-recall')}, expected {precision}/{recall}")
    page.locator("#eval-strip").scroll_into_view_if_needed()
    box = page.locator("#eval-strip").bounding_box()
    at = lambda t: box["x"] + (10 + t * 300) / 320 * box["width"]  # noqa: E731
    page.mouse.move(at(0.95), box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(at(0.6), box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    dragged = float(text(page, "#thr-value"))
    check(abs(dragged - 0.6) < 0.02, f"dragged to {dragged}")
    precision, recall = precision_recall(ref.rows, ref.confidence, dragged)
    check(text(page, "#thr-precision") == shown(precision) and text(page, "#thr-recall") == shown(recall), f"after the drag to {dragged}")
    page.fill("#eval-threshold", "0.5")
    with page.expect_download() as download:
        page.click("#eval-json")
    exported = json.loads(pathlib.Path(download.value.path()).read_text())
    check(exported["metrics"] == ref.v1["metrics"], "the exported JSON's metrics")
    with page.expect_download() as download:
        page.click("#eval-html")
    check('id="confusion"' in pathlib.Path(download.value.path()).read_text(), "the exported HTML report")
    screenshot(page, out, "eval-1280")
    # The README's picture (docs/playground.png is a copy): the top of this view.
    page.screenshot(path=str(out / "readme-eval.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 960})

    # The next version against this run: the expected flips.
    tab(page, "policy")
    page.fill("#policy-text", POLICY_V2)
    tab(page, "eval")
    page.click("#eval-run")
    wait_text(page, "#status", "eval finished", starts=True, timeout=60_000)
    page.wait_for_selector("#eval-compare", state="visible")
    broken = sorted(page.locator("#flips-broken li").evaluate_all("(items) => items.map((i) => i.dataset.id)"))
    check(broken == ref.gold1, f"broken flips {broken}, expected {ref.gold1}")
    check(page.locator("#flips-fixed li").all_text_contents() == ["none"], "nothing fixed")
    p = binomtest(0, len(ref.gold1), 0.5).pvalue
    check(text(page, "#mcnemar") == f"{p:.4f}", f"McNemar p {text(page, '#mcnemar')} vs scipy {p:.4f}")
    screenshot(page, out, "compare-1280")

    # Export and import: markdown, and an LM Studio preset that round-trips.
    tab(page, "policy")
    page.fill("#policy-text", POLICY)
    tab(page, "export")
    with page.expect_download() as download:
        page.click("#export-md")
    check(pathlib.Path(download.value.path()).read_text() == POLICY, "the markdown export")
    with page.expect_download() as download:
        page.click("#export-preset")
    preset_path = work / download.value.suggested_filename
    download.value.save_as(preset_path)
    preset = json.loads(preset_path.read_text())
    fields = {f["key"]: f["value"] for f in preset["operation"]["fields"]}
    check(fields["llm.prediction.systemPrompt"] == POLICY and preset["identifier"].startswith("@local:"), f"{preset}")
    screenshot(page, out, "export-1280")
    tab(page, "policy")
    page.fill("#policy-text", "something else")
    page.fill("#policy-name", "other")
    tab(page, "export")
    page.set_input_files("#import-preset", str(preset_path))
    wait_text(page, "#status", "imported", starts=True, timeout=10_000)
    check(page.input_value("#policy-text") == POLICY and page.input_value("#policy-name") == "web-test", "the preset round-trips")

    # Keyboard: the tabs move with the arrow keys.
    page.focus("#tab-export")
    page.keyboard.press("ArrowRight")
    check(page.evaluate("document.activeElement.id") == "tab-policy", "arrow keys move between tabs")
    check(page.locator("#view-policy").is_visible(), "the policy view follows")
    check(page.locator("img").count() == 0, "markup in content or policy became an element")
    view.clean("the playground")
    view.close()


def narrow(chromium, server: Server, out: pathlib.Path) -> None:
    """Each view at 320 px: nothing wider than the screen; and a large screen, in the dark theme."""
    for width, height, scheme in [(320, 800, "light"), (1920, 1080, "dark")]:
        view = Page(chromium, width, height, scheme)
        page = view.page
        open_page(page, server)
        for name in ["policy", "try", "eval", "export"]:
            tab(page, name)
            overflow = page.evaluate("document.documentElement.scrollWidth")
            check(overflow <= width, f"the {name} view is {overflow} px wide at {width} px")
            screenshot(page, out, f"{name}-{width}")
        view.clean(f"the page at {width} px")
        view.close()


def reasoning(chromium, server: Server, out: pathlib.Path) -> None:
    """The scripted reasoning (markup included) streams as text, in several updates, and moves nothing."""
    view = Page(chromium)
    page = view.page
    open_page(page, server)
    page.fill("#policy-text", POLICY)
    tab(page, "try")
    page.fill("#try-text", XSS)
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver((changes) => { window.__updates += changes.length; })
            .observe(document.getElementById('try-reasoning'), { childList: true, characterData: true, subtree: true });
    }""")
    boxes = lambda: [page.locator(s).bounding_box() for s in ("#try-reasoning", "#try-verdict", "#try-table")]  # noqa: E731
    before = boxes()
    page.click("#try-run")
    wait_text(page, "#status", "done", starts=True, timeout=30_000)
    expected = json.loads((pathlib.Path(server.process.args[3]) / "expected.json").read_text())["reasoning"]
    check(text(page, "#try-reasoning") == expected, f"reasoning shown {text(page, '#try-reasoning')!r}")
    updates = page.evaluate("window.__updates")
    check(updates > 2, f"the reasoning arrived in {updates} update(s)")
    after = boxes()
    check(before == after, f"the layout moved while reasoning streamed: {before} -> {after}")
    check(text(page, "#try-outcome").startswith("no verdict"), "no final answer, no verdict")
    check(page.locator("img").count() == 0 and page.locator("#try-reasoning script").count() == 0, "markup became elements")
    screenshot(page, out, "try-reasoning-1280")
    view.clean("the reasoning page")
    view.close()


def api_key(chromium, keyed: Server) -> None:
    view = Page(chromium)
    page = view.page
    page.goto(keyed.url("/"))
    page.wait_for_selector("#key-panel", state="visible", timeout=15_000)
    check("API key" in text(page, "#status"), f"the page says it needs the key: {text(page, '#status')}")
    page.fill("#api-key", KEY)
    page.click("#key-save")
    wait_text(page, "#status", "ready", starts=False, timeout=15_000)
    check(text(page, "#model-name") == "scripted", "the page works with the key")
    page.wait_for_selector("#lint-findings li", timeout=15_000)
    # The refused requests before the key are expected; nothing else may fail.
    view.clean("the page with --api-key", allow="401")
    view.close()


def report(chromium, ref: Reference, out: pathlib.Path) -> None:
    """Issue 13: the HTML report of `safeguard eval --report` in a browser."""
    view = Page(chromium)
    page = view.page
    page.goto(ref.report.as_uri())
    c = ref.v1["metrics"]["confusion"]
    for cell in ["tp", "fp", "tn", "fn", "violating_unread", "safe_unread"]:
        shown_value = page.locator(f"#confusion #{cell}").text_content()
        check(shown_value == str(c[cell]), f"report confusion {cell}: {shown_value} vs --json {c[cell]}")
    for curve in ["pr-curve", "roc-curve", "reliability"]:
        svg = page.locator(f"svg#{curve}")
        check(svg.count() == 1 and svg.bounding_box()["width"] > 100, f"the {curve} SVG is drawn")
    screenshot(page, out, "report-1280")
    view.clean("the eval report")
    view.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("group", choices=["api", "browser"])
    parser.add_argument("--bin", required=True)
    parser.add_argument("--fixtures", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--chromium", type=pathlib.Path, default=pathlib.Path("/usr/bin/chromium"))
    args = parser.parse_args()
    {"api": api, "browser": browser}[args.group](args)


if __name__ == "__main__":
    main()
