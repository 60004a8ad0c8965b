"""mlx-lm vs `safeguard bench` on one model, side by side.

mlx-lm is measured at its defaults (the checkpoint's bf16 compute) and in the
dtype our engine computes in: float32 on the CPU (floating parameters cast with
model.set_dtype(mx.float32)), the model's own on a GPU, where the two coincide.
Prefill tok/s, decode tok/s, TTFT and peak memory are medians over runs after a
warm-up, with random prompt ids. Then classification:
N synthetic items against a policy at low effort, through our Classifier (the
policy's KV state cached) vs mlx-lm in the same dtype: one by one
through stream_generate, and through its batch_generate in batches of the
same size as ours (CLASSIFY_BATCH, 8).
Generation is capped at CLASSIFY_MAX_TOKENS because a random model never stops.
mlx-lm can be timed on fewer items than ours, since 64 full prompts through it
take hours on a small CPU: one by one on the first CLASSIFY_BASELINE_ITEMS
(every item costs the same, so items/s does not depend on how many run), and
batched on one full batch.
With LLAMA_CPP=1, llama.cpp's llama-bench as well, on a GGUF of the same
weights (benches/llama_cpp.py; its first run builds llama.cpp, ~10 minutes on
2 cores): prefill of PROMPT_TOKENS, decode of GEN_TOKENS after them, means over
RUNS runs, at the better of 1 and all threads (LLAMA_CPP_THREADS).

On the CPU, safeguard runs once per SAFEGUARD_KERNELS entry (`--cpu-kernels`;
default exact,fast), and reports how far fast moves next-token distributions
from exact over FIDELITY positions (default 256; 0 skips).

env: PROMPT_TOKENS GEN_TOKENS RUNS CLASSIFY_ITEMS CLASSIFY_MAX_TOKENS
     CLASSIFY_BATCH CLASSIFY_BASELINE_ITEMS POLICY MLX_LM_DEFAULTS
     LLAMA_CPP LLAMA_CPP_THREADS SAFEGUARD_KERNELS FIDELITY
usage: compare.py MODEL_DIR SAFEGUARD_BIN
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def same_blas_as_safeguard():
    """On Linux our binary may link an OpenBLAS that MLX's float32 matmuls
    then call (OPENBLAS=1, build.rs); mlx-lm then gets the same one through
    LD_PRELOAD, so the two differ in their own code only. Re-executes this
    script once."""
    if not sys.platform.startswith("linux") or os.environ.get("SAFEGUARD_COMPARE_BLAS"):
        return
    linked = subprocess.run(["ldd", sys.argv[2]], capture_output=True, text=True).stdout
    library = next((line.split("=>")[1].split("(")[0].strip() for line in linked.splitlines()
                    if "libopenblas" in line and "=>" in line), None)
    env = dict(os.environ, SAFEGUARD_COMPARE_BLAS=library or "the reference BLAS bundled with mlx")
    if library:
        env["LD_PRELOAD"] = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


same_blas_as_safeguard()

import mlx.core as mx  # noqa: E402  (after the re-execution above)
import mlx_lm
from mlx_lm.generate import batch_generate, stream_generate
from mlx_lm.sample_utils import make_sampler
from mlx.utils import tree_flatten

P = int(os.environ.get("PROMPT_TOKENS", 512))
G = int(os.environ.get("GEN_TOKENS", 128))
RUNS = int(os.environ.get("RUNS", 3))
ITEMS = int(os.environ.get("CLASSIFY_ITEMS", 64))
CMAX = int(os.environ.get("CLASSIFY_MAX_TOKENS", 32))
BATCH = int(os.environ.get("CLASSIFY_BATCH", 8))
BASELINE_ITEMS = min(ITEMS, int(os.environ.get("CLASSIFY_BASELINE_ITEMS", ITEMS)))
POLICY = os.environ.get("POLICY", "spam")
# mlx-lm at its bf16 defaults runs ~15x slower than float32 on CPU; 0 skips it
# there (on a GPU the defaults are the same-dtype baseline and always run).
DEFAULTS = os.environ.get("MLX_LM_DEFAULTS", "1") != "0"
LLAMA_CPP = os.environ.get("LLAMA_CPP", "0") not in ("", "0")
# Our CPU kernels to measure (`--cpu-kernels`); the first also gets the profile
# and the classification run. Ignored on a GPU, where MLX's kernels run.
KERNELS = [k for k in os.environ.get("SAFEGUARD_KERNELS", "exact,fast").split(",") if k]
FIDELITY = int(os.environ.get("FIDELITY", 256))  # positions for fast vs exact; 0 skips


def synthetic_items(n):  # the same texts as safeguard's bench::synthetic_items
    return [
        f"Message {i}: hello, I wanted to ask whether the meeting on day {i % 28 + 1} still stands, "
        f"and whether I should bring the report with the numbers for week {i % 52 + 1}."
        for i in range(n)
    ]


def one_run(model, tokenizer, prompt, gen):
    mx.clear_cache()
    mx.reset_peak_memory()
    sampler = make_sampler(0.0)
    start = time.perf_counter()
    ttft, last = None, None
    for r in stream_generate(model, tokenizer, prompt, max_tokens=gen, sampler=sampler):
        if ttft is None:
            ttft = time.perf_counter() - start
        last = r
    return {
        "prefill_tps": last.prompt_tps,
        "decode_tps": last.generation_tps,
        "ttft_ms": ttft * 1e3,
        "peak_memory": mx.get_peak_memory(),
    }


def bench_mlx_lm(model, tokenizer, prompt):
    one_run(model, tokenizer, prompt, min(G, 8))  # warm-up
    runs = [one_run(model, tokenizer, prompt, G) for _ in range(RUNS)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def classify_mlx_lm(model, tokenizer, prompts):
    sampler = make_sampler(0.0)
    list(stream_generate(model, tokenizer, prompts[0], max_tokens=2, sampler=sampler))  # warm-up
    start = time.perf_counter()
    for p in prompts:
        for _ in stream_generate(model, tokenizer, p, max_tokens=CMAX, sampler=sampler):
            pass
    return len(prompts) / (time.perf_counter() - start)


def classify_mlx_lm_batched(model, tokenizer, prompts):
    """mlx-lm's continuous batching, BATCH at a time, every prompt prefilled in full."""
    start = time.perf_counter()
    batch_generate(model, tokenizer, prompts, max_tokens=CMAX,
                   prefill_batch_size=BATCH, completion_batch_size=BATCH)
    return len(prompts) / (time.perf_counter() - start)


def rendered_prompts(safeguard, model_dir, items):
    """Our classification prompts (token ids) from `classify --dry-run`."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(items) + "\n")
    out = subprocess.run(
        [safeguard, "classify", "-m", model_dir, "--policy", POLICY, "--effort", "low", "--dry-run", "--input", f.name],
        check=True, capture_output=True, text=True,
    ).stdout
    os.unlink(f.name)
    return [[int(t) for t in line.split(",")] for line in out.splitlines() if line and line[0].isdigit() and "," in line]


def eval_and_classify_seconds(safeguard, model_dir, items, runs=3):
    """`safeguard eval` and `safeguard classify` on the same labelled file with the same flags
    (nothing cached), alternating, so both see the same machine: median wall seconds of each,
    model load included in both."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for i, text in enumerate(items):
            f.write(json.dumps({"id": f"item-{i}", "text": text, "label": i % 2}) + "\n")
    common = ["-m", model_dir, "--policy", POLICY, "--input", f.name, "--effort", "low",
              "--max-tokens", str(CMAX), "--batch-size", str(BATCH), "--json"]
    seconds = {"eval": [], "classify": []}
    for _ in range(runs):
        for command, extra in (("classify", []), ("eval", ["--no-cache"])):
            start = time.perf_counter()
            # eval exits 1 when a gate fails; only its timing matters here.
            subprocess.run([safeguard, command, *common, *extra], check=command == "classify", capture_output=True)
            seconds[command].append(time.perf_counter() - start)
    os.unlink(f.name)
    return statistics.median(seconds["eval"]), statistics.median(seconds["classify"])


def cell(value, fmt, unit=""):  # llama-bench reports neither TTFT nor peak memory: "–"
    return "–" if value is None else format(value, fmt) + unit


def main(model_dir, safeguard):
    llama = None
    if LLAMA_CPP:  # first: its build is the slow part, and fails early
        import llama_cpp
        load = os.getloadavg()[0]
        llama = llama_cpp.measure(model_dir, P, G, RUNS)
        llama["load"] = load

    model, tokenizer = mlx_lm.load(model_dir)
    rng = __import__("random").Random(P)
    prompt = [rng.randrange(199998) for _ in range(P)]
    prompts = rendered_prompts(safeguard, model_dir, synthetic_items(ITEMS)) if ITEMS else []
    assert len(prompts) == ITEMS, len(prompts)

    # safeguard computes in float32 on the CPU and in the model's dtype on a
    # GPU; mlx-lm is measured at its defaults and in that same dtype.
    gpu = mx.default_device().type == mx.DeviceType.gpu
    default = next(str(v.dtype) for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating))
    default = default.removeprefix("mlx.core.")
    theirs = []  # (runner, dtype, metrics)
    if DEFAULTS or gpu:
        print(f"[mlx-lm ({default}, defaults): {P} prompt tokens, {G} generated, {RUNS} runs]", file=sys.stderr, flush=True)
        theirs.append((f"mlx-lm ({default}, defaults)", default, bench_mlx_lm(model, tokenizer, prompt)))
    if not gpu:
        model.set_dtype(mx.float32)  # floating parameters only (its default predicate)
        print("[mlx-lm (float32)]", file=sys.stderr, flush=True)
        theirs.append(("mlx-lm (float32)", "float32", bench_mlx_lm(model, tokenizer, prompt)))
    same_dtype = theirs[-1][1]
    if ITEMS:
        baseline = prompts[:BASELINE_ITEMS]
        print(f"[mlx-lm {same_dtype}: {len(baseline)} items one by one, <= {CMAX} tokens]", file=sys.stderr, flush=True)
        theirs_items = classify_mlx_lm(model, tokenizer, baseline)
        batch = prompts[:BATCH]
        print(f"[mlx-lm {same_dtype}: {len(batch)} items through batch_generate]", file=sys.stderr, flush=True)
        theirs_batched = classify_mlx_lm_batched(model, tokenizer, batch)
    del model
    mx.clear_cache()

    ours = []  # (runner, row); the first run's JSON has the profile and classification
    for i, kernels in enumerate(KERNELS[:1] if gpu else KERNELS):
        print(f"[safeguard bench{'' if gpu else f', {kernels} CPU kernels'}]", file=sys.stderr, flush=True)
        first = i == 0
        out = json.loads(subprocess.run(
            [safeguard, "bench", "-m", model_dir, "--prompt-tokens", str(P), "--gen-tokens", str(G),
             "--runs", str(RUNS), "--json"]
            + ([] if gpu else ["--cpu-kernels", kernels])
            + (["--profile"] if first else [])
            + (["--fidelity", str(FIDELITY)] if first and FIDELITY and not gpu else [])
            + (["--classify", str(ITEMS), "--batch-size", str(BATCH), "--policy", POLICY, "--effort", "low", "--classify-max-tokens", str(CMAX)] if ITEMS and first else []),
            check=True, capture_output=True, text=True,
        ).stdout)
        if first:
            m, machine = out["models"][0], out["machine"]
        c = out["models"][0]["contexts"][0]
        ours.append((f"safeguard ({m['dtype']}{'' if gpu else f', {kernels} kernels'})", {
            "prefill_tps": c["prefill_tokens_per_sec"]["median"],
            "decode_tps": c["decode_tokens_per_sec"]["median"],
            "ttft_ms": c["time_to_first_token_ms"]["median"],
            "peak_memory": c["peak_memory_bytes"]["median"],
        }))

    rows = [(name, r) for name, _, r in theirs]
    if llama:
        rows.append(("llama.cpp (GGUF: experts MXFP4, rest Q8_0/F32)", {**llama, "ttft_ms": None, "peak_memory": None}))
    peers = len(rows)
    rows += ours
    print(f"model {model_dir}: {m['parameters'] / 1e6:.0f} M parameters, {m['active_parameters'] / 1e6:.0f} M active, "
          f"{m['bits_per_weight']:.2f} bits/weight; {P} prompt tokens, {G} generated, median of {RUNS} runs")
    print(f"| runner | prefill tok/s | decode tok/s | TTFT ms | peak memory MB |")
    print(f"|---|---:|---:|---:|---:|")
    for name, r in rows:
        memory = None if r["peak_memory"] is None else r["peak_memory"] / 1e6
        print(f"| {name} | {r['prefill_tps']:.2f} | {r['decode_tps']:.2f} | {cell(r['ttft_ms'], '.0f')} | {cell(memory, '.0f')} |")
    print()
    print("| ours ÷ theirs | prefill | decode | TTFT | peak memory |")
    print("|---|---:|---:|---:|---:|")
    for our_name, ours_row in ours:
        for name, r in rows[:peers]:
            ttft = None if r["ttft_ms"] is None else ours_row["ttft_ms"] / r["ttft_ms"]
            memory = None if r["peak_memory"] is None else ours_row["peak_memory"] / r["peak_memory"]
            print(f"| {our_name} vs {name} | {ours_row['prefill_tps'] / r['prefill_tps']:.2f}× "
                  f"| {ours_row['decode_tps'] / r['decode_tps']:.2f}× | {cell(ttft, '.2f', '×')} | {cell(memory, '.2f', '×')} |")
    estimate = json.loads(subprocess.run(
        [safeguard, "estimate", "-m", model_dir, "--context-length", str(P + G), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout)["total_bytes"]
    measured = ours[0][1]["peak_memory"]
    print(f"\nmemory estimate (`safeguard estimate --context-length {P + G}`) {estimate / 1e6:.0f} MB against "
          f"{measured / 1e6:.0f} MB measured peak: {100 * (estimate / measured - 1):+.1f}% (the guardrail's bound: ±10%)")
    print(f"\nquantized matmuls: {machine['quantized_matmuls']}; 1-minute load average at the end {os.getloadavg()[0]:.2f}")
    if sys.platform.startswith("linux"):
        print(f"float32 matmuls (both runners): {os.environ.get('SAFEGUARD_COMPARE_BLAS')}")
    if "fidelity" in m:
        f = m["fidelity"]
        print(f"fast vs exact kernels, next-token distributions over {f['positions']} positions: top-1 agreement "
              f"{100 * f['top1_agreement']:.1f}%, KL mean {f['mean_kl']:.2e}, max {f['max_kl']:.2e} nats")
    if llama:
        threads = ", ".join(f"{t}: {v['prefill_tps']:.2f} / {v['decode_tps']:.2f}" for t, v in llama["by_threads"].items())
        print(f"\nllama.cpp: llama-bench from {llama['source']} on {llama['cpu_info']}, GGUF of {llama['model_bytes'] / 1e9:.2f} GB "
              f"(the same weights), means of {RUNS} runs, decode after {P} tokens of context; best prefill with "
              f"{llama['prefill_threads']} thread(s), decode with {llama['decode_threads']} (prefill / decode tok/s by threads: "
              f"{threads}); 1-minute load average before it {llama['load']:.2f}")
    profile = m["profile"]
    totals = [sum(s[i] for s in profile["stages"]) for i in (1, 2)]
    print(f"\nwhere safeguard's time goes (each stage evaluated alone; prefill of {profile['prompt_tokens']} tokens, "
          f"decode over {profile['decode_steps']} steps):")
    print("| stage | prefill ms | share | decode ms/token | share |\n|---|---:|---:|---:|---:|")
    for name, prefill, decode in profile["stages"]:
        print(f"| {name} | {prefill:.0f} | {100 * prefill / totals[0]:.1f}% | {decode:.1f} | {100 * decode / totals[1]:.1f}% |")
    build, evaluate = profile["decode_build_ms"], profile["decode_eval_ms"]
    print(f"a plain decode step: {build:.2f} ms building the graph on the host, {evaluate:.1f} ms evaluating "
          f"({100 * build / (build + evaluate):.1f}% host)")
    if not ITEMS:
        print("\nclassification: skipped (CLASSIFY_ITEMS=0)")
        return
    ours_items = m["classify"]["items_per_sec"]
    print(f"[safeguard eval: the same {ITEMS} items, labelled]", file=sys.stderr, flush=True)
    eval_seconds, classify_seconds = eval_and_classify_seconds(safeguard, model_dir, synthetic_items(ITEMS))
    print()
    print(f"classification, {ITEMS} items, {POLICY} policy ({len(prompts[0])} prompt tokens), effort low, "
          f"<= {CMAX} generated tokens each (the random model never stops):")
    print(f"| runner | items/s | ours ÷ theirs |\n|---|---:|---:|")
    print(f"| mlx-lm {same_dtype}, one by one (first {BASELINE_ITEMS} items) | {theirs_items:.4f} | {ours_items / theirs_items:.2f}× |")
    print(f"| mlx-lm {same_dtype}, batch_generate (first {min(BATCH, ITEMS)} items, batches of {BATCH}) "
          f"| {theirs_batched:.4f} | {ours_items / theirs_batched:.2f}× |")
    print(f"| safeguard Classifier (policy prefix cached, batches of {m['classify']['batch_size']}) | {ours_items:.4f} | |")
    print(f"\nsafeguard eval vs safeguard classify, the same {ITEMS} items and flags (wall time, load included, "
          f"median of 3 alternating runs): eval {eval_seconds:.2f} s, classify {classify_seconds:.2f} s, "
          f"eval takes {eval_seconds / classify_seconds:.3f}× classify's time")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
