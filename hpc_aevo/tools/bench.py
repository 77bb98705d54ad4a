"""Benchmarks of the reference substrate's trainer; each prints its numbers and writes a JSON record.

    python -m hpc_aevo.bench train [--preset anchor-1.86b|cpu-small|moe-gpu|moe-cpu-small] [--hidden ...] --out bench-train.json
    python -m hpc_aevo.bench pack [--seq-len 128] [--steps 60] --out bench-pack.json
    python -m hpc_aevo.bench noise [--rounds 10000] --out bench-noise.json   (hpc_aevo/tools/bench_noise.py)
    python -m hpc_aevo.bench search [--seeds 3] [--quick] --out bench-search.json   (hpc_aevo/tools/bench_search.py)
    python -m hpc_aevo.bench lmeval [--per-subset 8] [--steps 30] --out bench-lmeval.json   (tools/bench_lmeval.py)

`train`: synthetic tokens through one model shape (Llama: RMSNorm, SwiGLU, RoPE, untied
embeddings) in one run, for every backend this machine has: megatron-core with the substrate's
layer choice (substrate/layers.py) as Transformer Engine bf16, TE FP8 (delayed and tensorwise
scaling) and the local spec, and a plain Hugging Face Llama with SDPA attention as the baseline.
Each megatron backend also runs as `trainer/<backend>`: the substrate's own train.py, as a candidate's
job runs it (the puzzle data pipeline, its logging, a checkpoint of model and optimizer at the end),
at the same shape and layers, so the ratio trainer / plain megatron is the trainer's overhead.
A backend the machine cannot run is listed with the reason (layers.py's own error). Per backend:
tokens/s, model TFLOP/s and MFU against the GPU's dense bf16 peak, from timed steps after warmup.
FLOPs per token = 6 x (transformer + LM-head parameters) + 6 x layers x seq x hidden (causal
attention scores and values, forward and backward). The MoE presets (`experts` > 0) replace every MLP by
`experts` SwiGLU experts of width `expert_ffn`, `top_k` per token (substrate/moe.py: SequentialMLP +
allgather on the local spec, grouped GEMM + alltoall on TE; Mixtral for the HF baseline): their FLOPs count
the *active* parameters only (top_k experts and the router), the record keeps the total too.

`pack`: the substrate's train.py on the puzzle SFT data, padded rows vs packed rows, same steps:
useful (non-pad) tokens/s and the useful share of processed tokens, from each run's train_summary;
also useful tokens per CPU-second of the training loop, which stays comparable on a shared machine
whose other load changes the wall clock between the two runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hpc_aevo.state.records import Record
from hpc_aevo.tools import bench_lmeval, bench_noise, bench_search

SUBSTRATE = Path(__file__).resolve().parents[2] / "substrate"
DEMO_CAMPAIGN = Path(__file__).resolve().parents[2] / "campaigns" / "demo.yaml"
LMEVAL_CAMPAIGN = DEMO_CAMPAIGN.with_name("smollm2-lmeval.yaml")
PRESETS = {
    # The anchor shape: "1.86B" llama (with Llama's ffn 11008: 1.88B), seq 2048, micro-batch 2 (measured on H100: HF+SDPA 35.9k tok/s,
    # TE bf16 44.3k (MFU 0.48), TE FP8 58.0k-60.4k with plain megatron-core 0.19.2 + TE 2.20.2).
    "anchor-1.86b": dict(hidden=4096, layers=8, heads=32, kv_heads=32, ffn=11008, vocab=32000, seq_len=2048,
                         micro_batch=2, steps=20, warmup=5),
    "cpu-small": dict(hidden=256, layers=4, heads=4, kv_heads=4, ffn=688, vocab=32000, seq_len=256, micro_batch=2,
                      steps=6, warmup=2),
    # Mixtures of experts: a Qwen3-30B-A3B-like layer (128 experts of 768, top 8) at 1/2 width and 64 experts,
    # and a CPU one at cpu-small's width (dense ffn 688 ~ the active 2 x 344).
    "moe-gpu": dict(hidden=2048, layers=8, heads=16, kv_heads=4, ffn=6144, vocab=32000, seq_len=2048, micro_batch=2,
                    steps=20, warmup=5, experts=64, top_k=8, expert_ffn=768),
    "moe-cpu-small": dict(hidden=256, layers=4, heads=4, kv_heads=4, ffn=688, vocab=32000, seq_len=256, micro_batch=2,
                          steps=6, warmup=2, experts=8, top_k=2, expert_ffn=344),
}
MOE_KEYS = ("experts", "top_k", "expert_ffn")  # absent or experts 0: a dense shape
MEGATRON_BACKENDS = ("mcore-local", "te-bf16", "te-fp8-delayed", "te-fp8-tensorwise")
# The substrate's own train.py (data pipeline, logging, checkpointing on) with each megatron backend's layers.
TRAINER_BACKENDS = tuple(f"trainer/{name}" for name in MEGATRON_BACKENDS)
BACKENDS = ("hf-sdpa", *MEGATRON_BACKENDS, *TRAINER_BACKENDS)
DENSE_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "GH200": 989.4}  # SXM, dense


@dataclasses.dataclass
class BackendResult:
    backend: str
    status: str  # ok | unavailable | failed
    reason: str | None = None
    layer_spec: str | None = None
    precision: str | None = None
    tokens_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    step_s: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    checkpoint_s: float | None = None  # trainer rows: seconds of the one checkpoint save (model + optimizer)


@dataclasses.dataclass
class TrainBench(Record):
    SCHEMA = "hpc_aevo.bench_train"
    VERSION = 1

    device: str
    versions: dict[str, str | None]
    shape: dict[str, int]
    params: int  # all of them (every expert of a mixture)
    flops_per_token: float  # of the active parameters
    peak_bf16_tflops: float | None
    position_embedding: str
    results: list[BackendResult]
    ratios: dict[str, float]
    active_params: int | None = None  # a mixture's parameters one token goes through (None: dense)


@dataclasses.dataclass
class PackBench(Record):
    SCHEMA = "hpc_aevo.bench_pack"
    VERSION = 1

    seq_len: int
    steps: int
    batch_size: int
    padded: dict[str, float]
    packed: dict[str, float]
    useful_tokens_per_s_ratio: float  # packed / padded, wall clock
    useful_tokens_per_cpu_s_ratio: float  # packed / padded, CPU time: what a busy shared machine can still compare


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def flops_per_token(shape: dict) -> tuple[int, float]:
    """(parameters, training FLOPs per token) of the llama shape, input embedding excluded from FLOPs; for a
    mixture of experts, all parameters and the FLOPs of the active ones (see active_params)."""
    return _params(shape, active=False), 6.0 * _params(shape, active=True, matmul_only=True) + \
        6.0 * shape["layers"] * shape["seq_len"] * shape["hidden"]


def active_params(shape: dict) -> int | None:
    """The parameters one token goes through in a mixture of experts (its top_k experts, the router), or None."""
    return _params(shape, active=True) if is_moe(shape) else None


def is_moe(shape: dict) -> bool:
    return bool(shape.get("experts"))


def _params(shape: dict, active: bool, matmul_only: bool = False) -> int:
    h, v, layers = shape["hidden"], shape["vocab"], shape["layers"]
    head_dim = h // shape["heads"]
    attention = h * h * 2 + 2 * h * shape["kv_heads"] * head_dim  # q, o, k, v
    if is_moe(shape):  # SwiGLU experts (all, or the top_k a token visits) and the router
        mlp = (shape["top_k"] if active else shape["experts"]) * 3 * h * shape["expert_ffn"] + shape["experts"] * h
    else:
        mlp = 3 * h * shape["ffn"]  # SwiGLU gate/up/down
    matmul_params = layers * (attention + mlp + 2 * h) + v * h  # + two RMSNorms per layer, LM head
    return matmul_params if matmul_only else matmul_params + v * h + h  # + input embedding, final norm


def _hf_step(shape: dict, device, dtype):
    import torch
    import transformers

    common = dict(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                  num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"],
                  max_position_embeddings=shape["seq_len"], tie_word_embeddings=False, attn_implementation="sdpa")
    if is_moe(shape):
        config = transformers.MixtralConfig(**common, intermediate_size=shape["expert_ffn"],
                                            num_local_experts=shape["experts"], num_experts_per_tok=shape["top_k"])
        model = transformers.MixtralForCausalLM(config)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, intermediate_size=shape["ffn"]))
    model = model.to(device=device, dtype=dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(inputs, labels):
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, {"layer_spec": "hf-mixtral" if is_moe(shape) else "hf-llama", "precision": str(dtype).removeprefix("torch.")}


def _mcore_step(shape: dict, device, choice):
    """Plain megatron-core for this shape, with the spec and precision layers.py chose."""
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    substrate_model, moe = _substrate("model"), _substrate("moe")
    substrate_model.init_parallel(seed=0)
    experts = moe.checked(moe_recipe(shape), shape["ffn"]) if is_moe(shape) else None
    config = TransformerConfig(
        num_layers=shape["layers"], hidden_size=shape["hidden"], num_attention_heads=shape["heads"],
        num_query_groups=shape["kv_heads"], ffn_hidden_size=shape["ffn"], normalization="RMSNorm",
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        bias_activation_fusion=False, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=device.type == "cpu", **choice.config_kwargs(),
        **({**choice.moe_kwargs(), **moe.config_kwargs(experts, 1)} if experts else {}))
    # megatron's RoPE keeps its frequencies on CUDA: on CPU the same-cost learned positions stand in.
    positions = "rope" if device.type == "cuda" else "learned_absolute"
    spec = choice.spec(normalization="RMSNorm", num_experts=experts["experts"] if experts else None)
    model = GPTModel(config, spec, vocab_size=shape["vocab"], max_sequence_length=shape["seq_len"],
                     position_embedding_type=positions, share_embeddings_and_output_weights=False).to(device).train()
    if experts:
        moe.adapt_routers(model, te=choice.backend == "te")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    length = shape["seq_len"]
    pos = torch.arange(length, device=device).unsqueeze(0).expand(shape["micro_batch"], -1)
    mask = None if choice.backend == "te" else substrate_model.causal_mask(length, device)  # TE: causal kernel

    def step(inputs, labels):
        loss = model(inputs, pos, mask, labels=labels).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, choice.describe()


def _time(step, shape: dict, device, steps: int, warmup: int) -> tuple[float, float, float]:
    """Seconds per step after `warmup` steps, and the first and last loss (synthetic tokens, 4 batches)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, shape["vocab"], (shape["micro_batch"], shape["seq_len"] + 1), generator=generator)
           for _ in range(4)]
    batches = [(b[:, :-1].contiguous().to(device), b[:, 1:].contiguous().to(device)) for b in ids]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first = None
    for i in range(warmup):
        loss = step(*batches[i % len(batches)])
        first = first if first is not None else float(loss)
    sync()
    started = time.perf_counter()
    for i in range(steps):
        loss = step(*batches[i % len(batches)])
    sync()
    return (time.perf_counter() - started) / steps, first if first is not None else float(loss), float(loss)


def moe_recipe(shape: dict) -> dict:
    """The substrate's `model.moe` section of an MoE shape (router defaults: softmax, renormalised top-k,
    aux loss)."""
    return {"experts": shape["experts"], "top_k": shape["top_k"], "ffn_hidden": shape["expert_ffn"]}


def megatron_precision(name: str) -> tuple[str, str | None]:
    """(model.precision, model.fp8_recipe) of a megatron backend: mcore-local, te-bf16, te-fp8-<recipe>."""
    if name == "mcore-local":
        return "auto", None
    return ("bf16", None) if name == "te-bf16" else ("fp8", name.rsplit("-", 1)[1])


def _substrate(module: str):
    """A module of the reference substrate (its files import each other by bare name)."""
    if str(SUBSTRATE) not in sys.path:
        sys.path.insert(0, str(SUBSTRATE))
    return importlib.import_module(module)


def megatron_choice(name: str):
    """(substrate/layers.py's choice for megatron backend `name` on this machine, None), or (None, why this
    machine cannot run it: layers.py's own reason, or the spec it picks here is not the backend's)."""
    layers = _substrate("layers")
    precision, recipe = megatron_precision(name)
    try:
        choice = layers.choose({"precision": precision, "fp8_recipe": recipe or "delayed"})
    except layers.LayerSpecError as error:
        return None, str(error)
    if name == "mcore-local" and choice.backend == "te":
        return None, "TE is installed: layers.py picks the TE spec on this machine"
    if name != "mcore-local" and choice.backend != "te":
        return None, "Transformer Engine is not installed (TE bf16 needs it)"
    return choice, None


def run_backend(name: str, shape: dict, flops: float, peak: float | None) -> BackendResult:
    import torch

    if name.startswith("trainer/"):
        return run_trainer(name, shape, flops, peak)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if name == "hf-sdpa":
        step, described = _hf_step(shape, device, torch.bfloat16 if cuda else torch.float32)
    else:
        choice, reason = megatron_choice(name)
        if reason:
            return BackendResult(name, "unavailable", reason)
        step, described = _mcore_step(shape, device, choice)
    step_s, first, last = _time(step, shape, device, shape["steps"], shape["warmup"])
    tokens_per_s = shape["micro_batch"] * shape["seq_len"] / step_s
    tflops = tokens_per_s * flops / 1e12
    return BackendResult(name, "ok", None, described["layer_spec"], described["precision"], tokens_per_s, tflops,
                         tflops / peak if peak else None, step_s, first, last)


def trainer_recipe(shape: dict, name: str) -> dict:
    """The substrate's recipe for this llama shape and megatron backend: the puzzle data (padded rows of
    seq_len, the character tokenizer inside the shape's vocabulary), one row per micro-batch, a log line
    at the end of the warmup and every `warmup` steps after, one checkpoint (model and AdamW) at the end."""
    recipe = yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text())
    precision, fp8_recipe = megatron_precision(name)
    total = shape["warmup"] + shape["steps"]
    recipe["model"] = dict(arch="llama", hidden=shape["hidden"], layers=shape["layers"], heads=shape["heads"],
                           kv_heads=shape["kv_heads"], ffn_hidden=shape["ffn"], vocab=shape["vocab"],
                           seq_len=shape["seq_len"], tie_embeddings=False, precision=precision,
                           **({"fp8_recipe": fp8_recipe} if fp8_recipe else {}),
                           **({"moe": moe_recipe(shape)} if is_moe(shape) else {}))
    recipe["data"]["train_examples"] = max(64, 4 * shape["micro_batch"])
    recipe["optim"].update(steps=total, batch_size=shape["micro_batch"], warmup_steps=0)
    recipe["logging"] = {"every": math.gcd(shape["warmup"], shape["steps"])}
    recipe["checkpoints"].update(every=total, format="torch")
    return recipe


def run_trainer(name: str, shape: dict, flops: float, peak: float | None) -> BackendResult:
    """train.py itself, as a candidate's job runs it; tokens/s over the steps after warmup, from its
    log's cumulative loop time (each logged step waits for the device, so the figure is device time)."""
    megatron = name.removeprefix("trainer/")
    choice, reason = megatron_choice(megatron)
    if reason:
        return BackendResult(name, "unavailable", reason)
    with tempfile.TemporaryDirectory() as tmp:
        recipe_path, out = Path(tmp) / "recipe.yaml", Path(tmp) / "out"
        recipe_path.write_text(yaml.safe_dump(trainer_recipe(shape, megatron)))
        proc = subprocess.run([sys.executable, "train.py", "--recipe", str(recipe_path), "--out", str(out)],
                              cwd=SUBSTRATE, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return BackendResult(name, "failed", f"train.py exit {proc.returncode}: {tail}")
        summary = json.loads((out / "train_summary.json").read_text())
    logged = {entry["step"]: entry for entry in summary["history"]}
    start, end = logged[shape["warmup"]], logged[shape["warmup"] + shape["steps"]]
    step_s = (end["loop_s"] - start["loop_s"]) / shape["steps"]
    tokens_per_s = shape["micro_batch"] * shape["seq_len"] / step_s
    tflops = tokens_per_s * flops / 1e12
    return BackendResult(name, "ok", None, choice.backend, choice.precision, tokens_per_s, tflops, tflops / peak if peak else None, step_s,
                         summary["history"][0]["loss"], end["loss"], summary["checkpoint_s"])


def _device_name() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        import platform

        threads = os.environ.get("SUBSTRATE_THREADS", "1")
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores; each backend runs {threads} torch thread(s))", None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in DENSE_BF16_PEAK_TFLOPS.items() if k in name.split()), None)
    return name, peak


def bench_train(shape: dict, backends: list[str], out: Path) -> TrainBench:
    """Each backend in a fresh process (a megatron parallel state and CUDA memory per backend)."""
    params, flops = flops_per_token(shape)
    device, peak = _device_name()
    results = []
    for name in backends:
        proc = subprocess.run([sys.executable, "-m", "hpc_aevo.bench", "_one", name, json.dumps(shape)],
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode == 0 and lines:
            results.append(BackendResult(**json.loads(lines[-1])))
        else:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results.append(BackendResult(name, "failed", f"exit {proc.returncode}: {tail}"))
        print(_row(results[-1]), flush=True)
    ratios = throughput_ratios({r.backend: r.tokens_per_s for r in results if r.status == "ok"})
    versions = {name: _version(name) for name in ("torch", "megatron-core", "transformers", "transformer-engine")}
    positions = "learned_absolute for megatron on CPU, rope for HF" if device.startswith("cpu") else "rope"
    record = TrainBench(device, versions, shape, params, flops, peak, positions, results, ratios, active_params(shape))
    record.save(out)
    print(json.dumps({"ratios": ratios, "out": str(out)}), flush=True)
    return record


def throughput_ratios(tokens_per_s: dict[str, float]) -> dict[str, float]:
    """The issue's targets as tokens/s ratios, for the backends measured: TE bf16 over HF+SDPA, TE FP8 over
    TE bf16, for plain megatron and for the substrate's trainer, and the trainer over plain megatron."""
    pairs = [("te-bf16", "hf-sdpa")] + [(f"te-fp8-{r}", "te-bf16") for r in ("delayed", "tensorwise")]
    pairs += [(f"trainer/{a}", f"trainer/{b}" if b != "hf-sdpa" else b) for a, b in pairs]
    pairs += [(f"trainer/{name}", name) for name in MEGATRON_BACKENDS]
    key = lambda name: name.replace("trainer/", "trainer_").replace("-", "_")  # noqa: E731
    return {f"{key(a)}_over_{key(b)}": tokens_per_s[a] / tokens_per_s[b]
            for a, b in pairs if a in tokens_per_s and b in tokens_per_s}


def _row(r: BackendResult) -> str:
    if r.status != "ok":
        return f"{r.backend:26s} {r.status}: {r.reason}"
    mfu = f"{r.mfu:.3f}" if r.mfu is not None else "n/a"
    saving = f", checkpoint {r.checkpoint_s:.1f}s" if r.checkpoint_s is not None else ""
    return (f"{r.backend:26s} {r.tokens_per_s:12.1f} tok/s  {r.tflops:8.3f} TFLOP/s  MFU {mfu}  "
            f"({r.layer_spec}, {r.precision}, {r.step_s * 1000:.1f} ms/step, loss {r.loss_first:.3f}->{r.loss_last:.3f}"
            f"{saving})")


def bench_pack(seq_len: int, steps: int, batch_size: int, out: Path) -> PackBench:
    """train.py on the puzzle SFT data, padded then packed, the same steps and rows per step."""
    recipe = yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text())
    recipe["model"]["seq_len"] = seq_len
    recipe["optim"].update(steps=steps, batch_size=batch_size)
    recipe["checkpoints"]["every"] = steps
    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pack in (False, True):
            recipe["data"]["pack"] = pack
            path = Path(tmp) / f"recipe-{pack}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            subprocess.run([sys.executable, "train.py", "--recipe", str(path), "--out", str(Path(tmp) / str(pack))],
                           cwd=SUBSTRATE, check=True, capture_output=True)
            summary = json.loads((Path(tmp) / str(pack) / "train_summary.json").read_text())
            tokens = sum(r["tokens"] for r in summary["ranks"])
            useful = sum(r["useful_tokens"] for r in summary["ranks"])
            measured[pack] = {"tokens_per_s": tokens / summary["loop_s"], "useful_tokens_per_s": useful / summary["loop_s"],
                              "useful_tokens_per_cpu_s": useful / summary["loop_cpu_s"],
                              "useful_fraction": useful / tokens, "loop_s": summary["loop_s"],
                              "loop_cpu_s": summary["loop_cpu_s"], "rows": summary["rows"],
                              "examples": summary["examples"]}
            print(json.dumps({"packed": pack, **measured[pack]}), flush=True)
    ratio = lambda key: measured[True][key] / measured[False][key]  # noqa: E731
    record = PackBench(seq_len, steps, batch_size, measured[False], measured[True],
                       ratio("useful_tokens_per_s"), ratio("useful_tokens_per_cpu_s"))
    record.save(out)
    return record


def _gains(text: str) -> tuple[float, ...]:
    """`--power-gains`: comma-separated positive numbers."""
    try:
        gains = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None
    if any(g <= 0 for g in gains):
        raise argparse.ArgumentTypeError(f"gains must be positive, not {text!r}")
    return gains


def _noise_input_problem(args: argparse.Namespace) -> str | None:
    """The one line that says what is wrong with `noise`'s numbers, or None."""
    if args.rounds < 1 or args.trap_rounds < 1 or args.power_rounds < 1:
        return "--rounds, --trap-rounds and --power-rounds must be at least 1"
    if min(args.dev_std or 0.0, args.leaderboard_std or 0.0) < 0:
        return "--dev-std and --leaderboard-std must be non-negative"
    if args.real_rounds < 0 or (args.real_rounds and not args.calibration):
        return "--real-rounds must be non-negative, and needs --calibration (the real runs it draws from)"
    if args.trap_variant is not None and not args.calibration:
        return "--trap-variant needs --calibration (the sweeps whose runs of it measure the trap)"
    if not -1 <= args.rho <= 1:
        return f"--rho must lie in [-1, 1], not {args.rho}"
    if (args.anchors is not None and args.anchors < 1) or (args.workers is not None and args.workers < 1):
        return "--anchors and --workers must be at least 1"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hpc_aevo.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="tokens/s, TFLOP/s, MFU: TE bf16, TE FP8, HF+SDPA on synthetic tokens")
    train.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="shape preset (default: anchor-1.86b on CUDA, cpu-small on CPU; moe-*: a mixture of experts)")
    for key in PRESETS["moe-cpu-small"]:
        train.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    train.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}")
    train.add_argument("--out", type=Path, default=Path("bench-train.json"))
    pack = sub.add_parser("pack", help="useful tokens/s of train.py with packed vs padded rows")
    pack.add_argument("--seq-len", type=int, default=128)
    pack.add_argument("--steps", type=int, default=60)
    pack.add_argument("--batch-size", type=int, default=32)
    pack.add_argument("--out", type=Path, default=Path("bench-pack.json"))
    noise = sub.add_parser("noise", help="false-promotion rate and trap detection of the decision code under seed noise")
    noise.add_argument("--campaign", type=Path, default=DEMO_CAMPAIGN,
                       help="anchors, workers, rounds and initial policy (default: campaigns/demo.yaml)")
    noise.add_argument("--rounds", type=int, default=10_000, help="null rounds, rounded up to whole campaigns")
    noise.add_argument("--trap-rounds", type=int, default=2_000)
    noise.add_argument("--anchors", type=int, default=None, help="override the campaign's anchors")
    noise.add_argument("--workers", type=int, default=None, help="override the campaign's workers_per_round")
    noise.add_argument("--dev-std", type=float, default=None,
                       help="seed std of the overall dev score "
                            f"(default: the calibration's, else {bench_noise.DEV_STD})")
    noise.add_argument("--leaderboard-std", type=float, default=None,
                       help="the same of the held-out score "
                            f"(default: the calibration's, else {bench_noise.LEADERBOARD_STD})")
    noise.add_argument("--calibration", type=Path, nargs="+", default=(), metavar="SWEEP.json",
                       help="calibrate sweeps of the campaign's start: the model's means, stds, split size and trap")
    noise.add_argument("--trap-variant", default=None, metavar="SIGNATURE[*STRIDE]",
                       help="with --calibration: the sweeps' variant that measures the trap "
                            f"(default {bench_noise.TRAP_SWEPT}, as a scripted worker first takes it)")
    noise.add_argument("--real-rounds", type=int, default=0,
                       help="rounds drawn from the sweeps' real runs of the start (needs --calibration)")
    noise.add_argument("--rho", type=float, default=0.0, help="correlation of one seed's dev and held-out noise")
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--power-gains", type=_gains, default=bench_noise.POWER_GAINS,
                       help="comma-separated true held-out gains whose promotion rate (the power) is measured")
    noise.add_argument("--power-rounds", type=int, default=2_000, help="rounds per true gain")
    noise.add_argument("--out", type=Path, default=Path("bench-noise.json"))
    search = sub.add_parser("search", help="the campaign loop against Optuna TPE and random search at equal candidates")
    search.add_argument("--campaign", type=Path, default=DEMO_CAMPAIGN,
                        help="substrate, anchors, workers, rounds and initial policy (default: campaigns/demo.yaml)")
    search.add_argument("--seeds", type=int, default=None, help="campaign seeds per method (default 3; --quick 2)")
    search.add_argument("--rounds", type=int, default=None, help="the loop's rounds (default: the campaign's; --quick 1)")
    search.add_argument("--jobs", type=int, default=2, help="candidates trained at once by TPE and random search")
    search.add_argument("--quick", action="store_true", help="a tiny recipe, 2 seeds: minutes, for CI")
    search.add_argument("--out", type=Path, default=Path("bench-search.json"))
    search.add_argument("--resume", action="store_true",
                        help="keep the runs a stopped bench of the same question wrote to --out; run the rest")
    lmeval = sub.add_parser("lmeval", help="a campaign's base and trained model through its lm-eval and the "
                                          "evaluator's leaderboard, item by item")
    lmeval.add_argument("--campaign", type=Path, default=LMEVAL_CAMPAIGN,
                        help="an lm-eval campaign with a local task (default: campaigns/smollm2-lmeval.yaml)")
    lmeval.add_argument("--per-subset", type=int, default=8, help="documents of each subtask scored")
    lmeval.add_argument("--steps", type=int, default=30, help="training steps of the trained model")
    lmeval.add_argument("--out", type=Path, default=Path("bench-lmeval.json"))
    one = sub.add_parser("_one", help=argparse.SUPPRESS)
    one.add_argument("backend")
    one.add_argument("shape")
    args = parser.parse_args(argv)
    if args.command == "_one":
        import warnings

        import torch

        warnings.filterwarnings("ignore")
        torch.set_num_threads(int(os.environ.get("SUBSTRATE_THREADS", "1")))  # as the substrate's trainer runs
        shape = json.loads(args.shape)
        _, flops = flops_per_token(shape)
        print(json.dumps(dataclasses.asdict(run_backend(args.backend, shape, flops, _device_name()[1]))), flush=True)
    elif args.command == "noise":
        problem = _noise_input_problem(args)
        if problem:
            noise.error(problem)
        try:
            bench_noise.bench_noise(
                args.campaign, args.rounds, args.trap_rounds, args.dev_std, args.leaderboard_std, args.rho, args.seed,
                args.out, args.anchors, args.workers, args.power_gains, args.power_rounds,
                shlex.join(["python", "-m", "hpc_aevo.bench", *(sys.argv[1:] if argv is None else argv)]),
                tuple(args.calibration), args.real_rounds,
                bench_noise.TRAP_SWEPT if args.trap_variant is None else args.trap_variant)
        except bench_noise.CalibrationError as exc:
            noise.error(str(exc))
    elif args.command == "search":
        for name in ("seeds", "rounds", "jobs"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                search.error(f"--{name}: expected an integer >= 1 (got {getattr(args, name)})")
        try:
            bench_search.bench_search(
                args.campaign, args.seeds or (2 if args.quick else 3), args.rounds, args.jobs, args.quick, args.out,
                shlex.join(["python", "-m", "hpc_aevo.bench", *(sys.argv[1:] if argv is None else argv)]),
                resume=args.resume)
        except bench_search.ResumeError as exc:
            search.error(str(exc))
    elif args.command == "lmeval":
        if min(args.per_subset, args.steps) < 1:
            lmeval.error("--per-subset and --steps must be at least 1")
        bench_lmeval.bench_lmeval(args.campaign, args.per_subset, args.steps, args.out,
                                  shlex.join(["python", "-m", "hpc_aevo.bench", *(sys.argv[1:] if argv is None else argv)]))
    elif args.command == "train":
        import torch

        unknown = sorted(set(args.backends.split(",")) - set(BACKENDS))
        if unknown:
            parser.error(f"--backends: unknown {unknown}; expected some of {BACKENDS}")
        preset = args.preset or ("anchor-1.86b" if torch.cuda.is_available() else "cpu-small")
        shape = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in PRESETS[preset].items()}
        shape.update({k: getattr(args, k) for k in MOE_KEYS if getattr(args, k) is not None})  # a dense preset made MoE
        if is_moe(shape) and not all(shape.get(k) for k in MOE_KEYS):
            parser.error(f"--experts: a mixture of experts needs {', '.join('--' + k.replace('_', '-') for k in MOE_KEYS)}")
        bench_train(shape, args.backends.split(","), args.out)
    else:
        bench_pack(args.seq_len, args.steps, args.batch_size, args.out)


if __name__ == "__main__":
    main()
