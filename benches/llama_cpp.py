"""llama.cpp's llama-bench on a GGUF of the same model, for compare.py.

Three steps, each cached under target/llama.cpp:
1. build: llama.cpp's source as vendored in the llama-cpp-python sdist on
   PyPI (pinned: LLAMA_CPP_PYTHON), cmake, Release, CPU only, tuned for this
   machine (GGML_NATIVE) except AMX on x86 (see build()), only the llama-bench
   target. ~10 minutes on 2 cores, once.
2. a GGUF of the model (an MXFP4 checkpoint in MLX's layout: the perf
   fixture), laid out as ggml-org's gpt-oss GGUFs are: architecture gpt-oss,
   experts MXFP4, attention, embedding and output Q8_0, norms, biases, sinks
   and router F32, the model's hyper-parameters and tokenizer. Every value is
   the model's own: MXFP4 codes and E8M0 scales map one to one onto ggml's
   MXFP4 blocks, an MXFP4 block is exactly a Q8_0 block (int8 = twice the
   e2m1 value, f16 scale = half the E8M0 one), and the 8-bit affine router is
   dequantized.
3. llama-bench, JSON output, at each thread count (1 and all cores, or
   LLAMA_CPP_THREADS): prefill of PROMPT_TOKENS (-p), and decode of
   GEN_TOKENS after a context of PROMPT_TOKENS (-n with -d), as `safeguard
   bench` measures them; means over RUNS runs after llama-bench's warm-up;
   the best thread count for each.

env: PROMPT_TOKENS GEN_TOKENS RUNS LLAMA_CPP_THREADS LLAMA_CPP_JOBS
usage: llama_cpp.py MODEL_DIR   (prints the result as JSON)
"""

import json
import os
import pathlib
import platform
import shutil
import struct
import subprocess
import sys
import tarfile

import gguf
import numpy as np

# The llama-cpp-python release whose vendored llama.cpp is built.
LLAMA_CPP_PYTHON = "0.3.36"
ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "llama.cpp"
JOBS = os.environ.get("LLAMA_CPP_JOBS", "2")


def log(msg):
    print(f"[llama.cpp: {msg}]", file=sys.stderr, flush=True)


def cpu_features() -> str:
    """The CPU's name and flags: a native build from another machine may use
    instructions this one lacks, or miss ones it has."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    first = info.split("\n\n")[0]
    return " ".join(line.split(":", 1)[1].strip() for line in first.splitlines()
                    if line.startswith(("model name", "flags")))


def build() -> pathlib.Path:
    """llama-bench built from the sdist's vendor/llama.cpp; reused once built."""
    src = ROOT / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    out = ROOT / "build"
    binary = out / "bin" / "llama-bench"
    configure = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_METAL=OFF", "-DGGML_CUDA=OFF",
                 "-DGGML_VULKAN=OFF", "-DGGML_BLAS=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        # Native minus AMX: on AMX machines (Sapphire Rapids and later) ggml's AMX matmul
        # segfaults on the Q8_0 attention of this model's prefill (llama.cpp issue 20824, open).
        configure.append("-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
        configure.append("-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
    stamp = ROOT / ".built"  # the source, configuration and CPU that build/ holds
    built = f"llama-cpp-python {LLAMA_CPP_PYTHON} {configure} {cpu_features()}"
    if binary.exists() and stamp.exists() and stamp.read_text() == built:
        return binary
    ROOT.mkdir(parents=True, exist_ok=True)
    if not (src / "CMakeLists.txt").exists():
        log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist from PyPI")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(ROOT)],
            check=True,
        )
        sdist = ROOT / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        shutil.rmtree(src, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(src, members=members, filter="data")
        sdist.unlink()
    if shutil.which("cmake") is None:
        sys.exit("llama.cpp needs cmake (Debian: apt-get install cmake; macOS: brew install cmake)")
    build_log = ROOT / "build.log"
    log(f"building llama-bench into {out} with {JOBS} jobs (~10 minutes on 2 cores; output in {build_log})")
    with open(build_log, "w") as f:
        for cmd in (
            ["cmake", "-S", str(src), "-B", str(out), *configure],
            ["cmake", "--build", str(out), "--target", "llama-bench", "-j", JOBS],
        ):
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                sys.exit(f"llama.cpp build failed: {' '.join(cmd)}; see {build_log}")
    stamp.write_text(built)
    return binary


def safetensors_arrays(model_dir: pathlib.Path) -> dict:
    """name -> numpy view (uint8 / uint32 / float32) of the fixture's single safetensors file."""
    path = model_dir / "model.safetensors"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, np.uint8, "r", offset=8 + n)
    arrays = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        raw = data[start:end]
        if t["dtype"] == "BF16":
            a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = raw.view({"U8": np.uint8, "U32": np.uint32, "F32": np.float32}[t["dtype"]])
        arrays[name] = a.reshape(t["shape"])
    return arrays


def nibbles(codes: np.ndarray) -> np.ndarray:
    """MLX's packed 4-bit codes (8 per uint32, element i in bits 4i..4i+3) -> one code per uint8."""
    b = codes.view(np.uint8)
    out = np.empty((*b.shape[:-1], 2 * b.shape[-1]), np.uint8)
    out[..., 0::2] = b & 0x0F
    out[..., 1::2] = b >> 4
    return out


def mxfp4_blocks(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MLX MXFP4 -> ggml block_mxfp4 bytes: per 32 weights the E8M0 scale, then 16 bytes holding
    weight j in the low nibble and weight j+16 in the high one. Same codes, same scales."""
    e = nibbles(codes).reshape(*scales.shape, 32)
    blocks = np.empty((*scales.shape, 17), np.uint8)
    blocks[..., 0] = scales
    blocks[..., 1:] = e[..., :16] | (e[..., 16:] << 4)
    return blocks.reshape(*scales.shape[:-1], -1)


# e2m1 code -> twice its value (ggml's kvalues_mxfp4 convention).
E2M1_X2 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)


def mxfp4_as_q8_0(codes: np.ndarray, scales: np.ndarray, rows=4096) -> np.ndarray:
    """MLX MXFP4 -> ggml block_q8_0 bytes (f16 scale, 32 int8), exactly: a weight of code c and
    E8M0 scale s is E2M1_X2[c] * 2^(s-128), and f16 holds 2^-24..2^15 exactly (the fixture's: 2^-10..2^-7)."""
    assert scales.min() >= 104 and scales.max() <= 143, "E8M0 scale outside f16's range"
    out = np.empty((*scales.shape, 34), np.uint8)
    for r in range(0, scales.shape[0], rows):  # row chunks: the embedding is 579 M weights
        s = scales[r:r + rows]
        out[r:r + rows, :, :2] = np.ldexp(np.float16(1), s.astype(np.int32) - 128).astype(np.float16)[..., None].view(np.uint8)
        out[r:r + rows, :, 2:] = E2M1_X2[nibbles(codes[r:r + rows]).reshape(*s.shape, 32)].view(np.uint8)
    return out.reshape(scales.shape[0], -1)


def affine8(w: dict, prefix: str, group: int) -> np.ndarray:
    """MLX 8-bit affine (4 codes per uint32, scale and bias per group) -> float32."""
    q = w[f"{prefix}.weight"].view(np.uint8).astype(np.float32)
    q = q.reshape(*w[f"{prefix}.scales"].shape, group)
    return (q * w[f"{prefix}.scales"][..., None] + w[f"{prefix}.biases"][..., None]).reshape(q.shape[0], -1)


def write_gguf(model_dir: pathlib.Path, out: pathlib.Path) -> None:
    """The fixture as a gpt-oss GGUF, written tensor by tensor (the file is ~3 GB)."""
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.get("quantization", {})
    assert quant.get("mode") == "mxfp4", f"{model_dir}: expected an MXFP4 checkpoint (the perf fixture), got {quant}"
    w = safetensors_arrays(model_dir)
    layers, rope = config["num_hidden_layers"], config["rope_scaling"]

    tmp = out.with_suffix(".tmp")
    gw = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT_OSS])
    gw.add_name(f"perf fixture ({model_dir.name})")
    gw.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    gw.add_block_count(layers)
    gw.add_context_length(config["max_position_embeddings"])
    gw.add_embedding_length(config["hidden_size"])
    gw.add_feed_forward_length(config["intermediate_size"])
    gw.add_expert_feed_forward_length(config["intermediate_size"])
    gw.add_head_count(config["num_attention_heads"])
    gw.add_head_count_kv(config["num_key_value_heads"])
    gw.add_key_length(config["head_dim"])
    gw.add_value_length(config["head_dim"])
    gw.add_layer_norm_rms_eps(config["rms_norm_eps"])
    gw.add_expert_count(config["num_local_experts"])
    gw.add_expert_used_count(config["num_experts_per_tok"])
    gw.add_sliding_window(config["sliding_window"])
    gw.add_rope_freq_base(config["rope_theta"])
    assert rope["rope_type"] == "yarn", rope
    gw.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    gw.add_rope_scaling_factor(rope["factor"])
    gw.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    gw.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
    gw.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])

    # The tokenizer as convert_hf_to_gguf.py writes gpt-oss's: byte-level BPE ("gpt2") with the
    # gpt-4o pre-tokenizer, ids past the tokenizer padded up to vocab_size as unused.
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tokens = [f"[PAD{i}]" for i in range(config["vocab_size"])]
    types = [gguf.TokenType.UNUSED] * config["vocab_size"]
    for text, i in tok["model"]["vocab"].items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for t in tok["added_tokens"]:
        tokens[t["id"]] = t["content"]
        types[t["id"]] = gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
    gw.add_tokenizer_model("gpt2")
    gw.add_tokenizer_pre("gpt-4o")
    gw.add_token_list(tokens)
    gw.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(gw)

    # (GGUF name, numpy shape in weights, producer, ggml type); MLX's [out, in] is ggml's {in, out}.
    plan = []
    Q8_0, MXFP4, F32 = (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.MXFP4,
                        gguf.GGMLQuantizationType.F32)

    def f32(name, src):
        plan.append((name, w[src].shape, lambda: np.ascontiguousarray(w[src], np.float32), F32))

    def quantized(name, src, qtype):
        codes, scales = w[f"{src}.weight"], w[f"{src}.scales"]
        make = mxfp4_blocks if qtype == MXFP4 else mxfp4_as_q8_0
        plan.append((name, (*scales.shape[:-1], 32 * scales.shape[-1]), lambda: make(codes, scales), qtype))

    quantized("token_embd.weight", "model.embed_tokens", Q8_0)
    for i in range(layers):
        p, b = f"model.layers.{i}", f"blk.{i}"
        f32(f"{b}.attn_norm.weight", f"{p}.input_layernorm.weight")
        f32(f"{b}.post_attention_norm.weight", f"{p}.post_attention_layernorm.weight")
        for ours, theirs in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            quantized(f"{b}.{theirs}.weight", f"{p}.self_attn.{ours}", Q8_0)
            f32(f"{b}.{theirs}.bias", f"{p}.self_attn.{ours}.bias")
        f32(f"{b}.attn_sinks.weight", f"{p}.self_attn.sinks")
        router = w[f"{p}.mlp.router.scales"].shape
        plan.append((f"{b}.ffn_gate_inp.weight", (router[0], 64 * router[1]),
                     lambda p=p: affine8(w, f"{p}.mlp.router", 64), F32))
        f32(f"{b}.ffn_gate_inp.bias", f"{p}.mlp.router.bias")
        for ours, theirs in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):
            quantized(f"{b}.{theirs}.weight", f"{p}.mlp.experts.{ours}", MXFP4)
            f32(f"{b}.{theirs}.bias", f"{p}.mlp.experts.{ours}.bias")
    f32("output_norm.weight", "model.norm.weight")
    quantized("output.weight", "lm_head", Q8_0)

    # Tensor infos first (no data), then the data one tensor at a time.
    for name, shape, _, qtype in plan:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        gw.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) // block * size,
                           raw_dtype=None if qtype == F32 else qtype)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_ti_data_to_file()
    for name, _, make, _ in plan:
        gw.write_tensor_data(make())
    gw.close()
    tmp.rename(out)


def gguf_of(model_dir: pathlib.Path) -> pathlib.Path:
    """The model's GGUF, rewritten when the model or this script is newer."""
    out = ROOT / f"{model_dir.resolve().name}.gguf"
    sources = [model_dir / "model.safetensors", model_dir / "config.json", pathlib.Path(__file__)]
    if not out.exists() or out.stat().st_mtime < max(f.stat().st_mtime for f in sources):
        log(f"writing {out}")
        ROOT.mkdir(parents=True, exist_ok=True)
        write_gguf(model_dir, out)
    return out


def llama_bench(binary, model, threads, runs, args):
    cmd = [str(binary), "-m", str(model), "-t", ",".join(map(str, threads)), "-r", str(runs), "-o", "json", *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"llama-bench failed (exit {run.returncode}): {' '.join(cmd)}\n{run.stderr[-2000:]}")
    return json.loads(run.stdout)


def measure(model_dir, prompt_tokens, gen_tokens, runs, threads=None):
    """Prefill of prompt_tokens, then decode of gen_tokens after a context of prompt_tokens (as our
    `bench` measures it: llama-bench's -d), each at every thread count; the best count for each."""
    binary, model = build(), gguf_of(pathlib.Path(model_dir))
    threads = threads or [int(t) for t in os.environ.get("LLAMA_CPP_THREADS", f"1,{os.cpu_count()}").split(",")]
    threads = sorted(set(threads))
    log(f"llama-bench: {prompt_tokens} prompt tokens, {gen_tokens} generated at depth {prompt_tokens}, "
        f"{runs} runs, threads {threads}")
    prefill = llama_bench(binary, model, threads, runs, ["-p", str(prompt_tokens), "-n", "0"])
    decode = llama_bench(binary, model, threads, runs, ["-p", "0", "-n", str(gen_tokens), "-d", str(prompt_tokens)])
    best_prefill = max(prefill, key=lambda r: r["avg_ts"])
    best_decode = max(decode, key=lambda r: r["avg_ts"])
    return {
        "prefill_tps": best_prefill["avg_ts"],
        "prefill_threads": best_prefill["n_threads"],
        "decode_tps": best_decode["avg_ts"],
        "decode_threads": best_decode["n_threads"],
        "by_threads": {r["n_threads"]: {"prefill_tps": r["avg_ts"], "decode_tps": d["avg_ts"]}
                       for r, d in zip(prefill, decode)},
        "model_bytes": best_prefill["model_size"],
        "source": f"llama-cpp-python {LLAMA_CPP_PYTHON}",  # its vendored tree has no git commit
        "cpu_info": best_prefill["cpu_info"],
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(os.environ.get("PROMPT_TOKENS", 128)),
                             int(os.environ.get("GEN_TOKENS", 32)), int(os.environ.get("RUNS", 3))), indent=2))
