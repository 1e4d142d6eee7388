"""``bench-model``: end-to-end throughput of the built-in loop, with the tuned table and without it.

llama-bench conventions (llama.cpp ``tools/llama-bench``): ``ppN`` is the prompt-processing rate of one N-token
prompt (tokens / prefill seconds), ``tgN`` the generation rate of N decode steps after a one-token prompt (tokens /
decode seconds, CUDA graphs on GPUs); each is the mean ± sample standard deviation over ``runs`` timed runs after
one warm-up run (``bench-model`` on a GPU also runs every test once in both settings before timing either). TTFT is the prefill time of the longest pp prompt plus the first token's selection; TPOT the mean
decode step of the longest tg run. ``--profile`` attributes the kernels of one eager decode step and one prefill to
the forward pass's stages (:data:`autotune.model.model.STAGES`) with ``torch.profiler`` and gives each stage's
achieved GB/s and TFLOP/s from the byte and FLOP counts of :func:`stage_costs`.
"""

from __future__ import annotations

import bisect
import inspect
import statistics
import time
from dataclasses import dataclass, field

import torch

from autotune.model.generation import DecodeRunner, sync_device
from autotune.model.model import STAGES, GptOss
from kernels.attention.config import AttentionShape, kv_storage_dtype
from kernels.attention.reference import cost as attention_cost
from kernels.moe_gemm import MoeShape
from kernels.moe_gemm.reference import cost as moe_cost


@dataclass
class TestResult:
    """One llama-bench test (``pp512``, ``tg128``...): per-run tokens/s."""

    name: str
    tokens: int
    seconds: list[float] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        """tokens/s of each timed run."""
        return [self.tokens / s for s in self.seconds]

    @property
    def mean(self) -> float:
        """Mean tokens/s."""
        return statistics.fmean(self.rates)

    @property
    def std(self) -> float:
        """Sample standard deviation of tokens/s (0 for one run)."""
        return statistics.stdev(self.rates) if len(self.rates) > 1 else 0.0


def test_name(kind: str, count: int, batch: int = 1) -> str:
    """llama-bench's name of a test (``pp512``, ``tg128``), with `` B=4`` appended for a batch above one."""
    return f"{kind}{count}" + (f" B={batch}" if batch > 1 else "")


def parse_batches(text: str) -> list[int]:
    """``"1,4,16"`` → ``[1, 4, 16]`` (decode batch sizes of ``bench-model --batch``).

    Raises:
        ValueError: anything but positive integers.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"{text!r} must be comma-separated batch sizes >= 1, e.g. 1,4,16,64")
    return sorted(set(int(p) for p in parts))


def parse_tests(text: str) -> list[tuple[str, int]]:
    """``"pp512,tg128"`` → ``[("pp", 512), ("tg", 128)]``.

    Raises:
        ValueError: a part that is not ``pp<N>`` or ``tg<N>`` with N ≥ 1.
    """
    tests = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, count = part[:2], part[2:]
        if kind not in ("pp", "tg") or not count.isdigit() or int(count) < 1:
            raise ValueError(f"test {part!r} must be pp<N> or tg<N> with N >= 1, e.g. pp512,tg128")
        tests.append((kind, int(count)))
    if not tests:
        raise ValueError("no tests given, e.g. pp512,tg128")
    return tests


@torch.inference_mode()
def run_prefill_test(model: GptOss, tokens: int, runs: int, *, seed: int = 0) -> TestResult:
    """``pp<tokens>``: batch-1 prefill of a random prompt into a fresh cache, one warm-up + ``runs`` timed runs."""
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator).to(model.device)
    cache = model.new_cache(1, tokens)
    result = TestResult(f"pp{tokens}", tokens)
    for run in range(runs + 1):
        cache.reset()
        sync_device(model.device)
        start = time.perf_counter()
        logits = model.prefill(prompt, cache)
        torch.argmax(logits, dim=-1)
        sync_device(model.device)
        if run:
            result.seconds.append(time.perf_counter() - start)
    return result


@torch.inference_mode()
def run_decode_test(model: GptOss, steps: int, runs: int, *, cuda_graphs: bool = True,
                    batch: int = 1) -> TestResult:
    """``tg<steps>`` of ``batch`` sequences decoded together: after a one-token prompt each, ``steps`` greedy decode
    steps (argmax fed back on the device, no host sync inside the timed loop); one warm-up run (compiles, captures
    graphs) + ``runs`` timed runs. Its rate counts every sequence's tokens (``batch · steps`` per run)."""
    cache = model.new_cache(batch, steps + 1)
    runner = DecodeRunner(model, cache, cuda_graphs=cuda_graphs)
    first = torch.arange(batch, dtype=torch.int64, device=model.device)[:, None] % model.config.vocab_size  # [B, 1]
    result = TestResult(test_name("tg", steps, batch), steps * batch)
    for run in range(runs + 1):
        cache.reset()
        runner.tokens.copy_(torch.argmax(model.prefill(first, cache), dim=-1))
        sync_device(model.device)
        start = time.perf_counter()
        for _ in range(steps):
            logits = runner.step()
            runner.tokens.copy_(torch.argmax(logits, dim=-1))
        sync_device(model.device)
        if run:
            result.seconds.append(time.perf_counter() - start)
    return result


def expected_experts_hit(tokens: int, experts: int, top_k: int) -> float:
    """Distinct experts hit by ``tokens`` tokens under uniform routing: E·(1 − (1 − k/E)^T)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def stage_costs(model: GptOss, *, tokens: int, context: int, decode: bool) -> dict[str, tuple[float, float]]:
    """Fewest bytes and FLOPs of each stage of one forward pass, summed over layers.

    Args:
        model: the model (its config and activation dtype).
        tokens: N, the tokens of the pass (prefill: prompt length at batch 1; decode: the batch).
        context: keys a query can see at most (decode: the cache length; prefill: the prompt length).
        decode: a decode step (attention reads the cache) or a prefill from position 0.

    Returns:
        stage name → (bytes, FLOPs). Stages without a count (embedding lookup, RoPE, routing prep) are absent.
    """
    c = model.config
    act = torch.finfo(model.act_dtype).bits // 8
    layers, H, E, k = c.num_hidden_layers, c.hidden_size, c.num_experts, c.experts_per_token
    costs: dict[str, tuple[float, float]] = {}
    costs["attn_norm_qkv"] = (layers * (c.qkv_size * (H + 1) * act + tokens * (H + c.qkv_size) * act),
                              layers * 2.0 * tokens * H * c.qkv_size)
    costs["attn_out"] = (layers * (H * (c.q_size + 1) * act + tokens * (c.q_size + 2 * H) * act),
                         layers * 2.0 * tokens * c.q_size * H)
    costs["mlp_norm_router"] = (layers * (E * (H + 1) * act + tokens * H * act * 2),
                                layers * 2.0 * tokens * H * E)
    hit = expected_experts_hit(tokens, E, k)
    for variant in ("mlp1", "mlp2"):
        shape = MoeShape.for_variant(variant, M=tokens, hidden=H, intermediate=c.intermediate_size, E=E, top_k=k)
        one = moe_cost(variant, shape, hit, act, act)
        costs[f"moe_{variant}"] = (layers * one.bytes, layers * one.flops)
    kv_bytes = kv_storage_dtype(model.kv_dtype, model.act_dtype).itemsize
    att_bytes = att_flops = 0.0
    for n in range(layers):
        shape = AttentionShape(batch=tokens if decode else 1, seq=context, heads_q=c.num_attention_heads,
                               heads_kv=c.num_key_value_heads, head_dim=c.head_dim, window=c.window(n))
        one = attention_cost("decode" if decode else "prefill", shape, act, kv_bytes)
        att_bytes += one.bytes
        att_flops += one.flops
    costs["attention"] = (att_bytes, att_flops)
    rows_out = tokens if decode else 1
    costs["unembed"] = (c.vocab_size * H * act + rows_out * c.vocab_size * 4, 2.0 * rows_out * c.vocab_size * H)
    return costs


def bytes_per_token(model: GptOss, context: int = 1) -> float:
    """Bytes a batch-1 decode step must read at ``context`` (weights of the experts hit, attention, router,
    unembedding, KV cache): the numerator of the bandwidth bound (3.708 GB for gpt-oss-20b per FACTS.md)."""
    return sum(b for b, _ in stage_costs(model, tokens=1, context=context, decode=True).values())


@dataclass
class StageTime:
    """GPU time of one stage in a profiled pass, and its achieved rates where the stage has a count."""

    stage: str
    gpu_us: float
    share: float
    gbps: float | None
    tflops: float | None


def _cpu_time_us(event) -> float:
    """Total CPU time of a profiler row (the interpreter runs kernels on the CPU)."""
    return float(getattr(event, "cpu_time_total", 0.0) or 0.0)


@dataclass
class KernelTime:
    """One kernel name's GPU time in a profiled pass."""

    name: str
    gpu_us: float
    calls: int
    stages: set[str] = field(default_factory=set)


def kernels_by_stage(events, stages: tuple[str, ...] = STAGES) -> tuple[dict[str, float], dict[str, KernelTime]]:
    """Attribute each GPU kernel (and memcpy/memset) of a profile to the stage whose GPU-side range contains it.

    ``record_function`` ranges appear on the GPU timeline as annotation events spanning from their first to their
    last kernel, idle gaps included, so their own length overstates a stage in an eager (launch-bound) pass; the
    kernels' own durations do not. A kernel outside every stage range counts as ``"other"``.

    Args:
        events: ``torch.profiler.profile(...).events()``.
        stages: the range names.

    Returns:
        (stage → summed kernel µs, including ``"other"``; kernel name → :class:`KernelTime`).
    """
    device_events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in device_events if e.name in stages)
    by_stage = {name: 0.0 for name in (*stages, "other")}
    kernels: dict[str, KernelTime] = {}
    starts = [r[0] for r in ranges]
    for event in device_events:
        if event.name in stages:
            continue
        start, duration = event.time_range.start, float(event.time_range.elapsed_us())
        index = bisect.bisect_right(starts, start) - 1
        stage = ranges[index][2] if index >= 0 and start <= ranges[index][1] else "other"
        by_stage[stage] += duration
        item = kernels.setdefault(event.name, KernelTime(event.name, 0.0, 0))
        item.gpu_us += duration
        item.calls += 1
        item.stages.add(stage)
    return by_stage, kernels


@torch.inference_mode()
def profile_pass(model: GptOss, *, decode: bool, tokens: int,
                 context: int) -> tuple[list[StageTime], list[KernelTime]]:
    """Profile one eager pass: a decode step of ``tokens`` sequences (the batch) at ``context``, or a
    ``tokens``-token prefill of one sequence.

    Returns:
        (per-stage GPU time — the summed durations of its kernels, see :func:`kernels_by_stage` — with share and
        achieved rates; kernels by GPU time with call counts). Without a GPU the stage times are CPU times
        (interpreter) and there are no kernels.
    """
    from torch.profiler import ProfilerActivity, profile

    generator = torch.Generator().manual_seed(1)
    length = context if decode else tokens
    batch = tokens if decode else 1
    prompt = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator).to(model.device)
    cache = model.new_cache(batch, length + 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    options = {"acc_events": True} if "acc_events" in inspect.signature(profile).parameters else {}

    def one_pass():
        cache.reset()
        if decode:
            model.prefill(prompt[:, :length - 1] if length > 1 else prompt, cache)
            with profile(activities=activities, **options) as prof:
                model.annotate = True
                model.decode(prompt[:, -1], cache, model.decode_step_configs(cache))
                sync_device(model.device)
        else:
            with profile(activities=activities, **options) as prof:
                model.annotate = True
                model.prefill(prompt, cache)
                sync_device(model.device)
        model.annotate = False
        return prof

    one_pass()  # warm-up: compiles
    prof = one_pass()
    on_gpu = model.device.type == "cuda"
    if on_gpu:
        by_stage, kernels = kernels_by_stage(prof.events())
    else:
        by_stage = {name: 0.0 for name in (*STAGES, "other")}
        for item in prof.key_averages():
            if item.key in by_stage:
                by_stage[item.key] += _cpu_time_us(item)
        kernels = {}
    total = sum(by_stage.values()) or 1.0
    costs = stage_costs(model, tokens=tokens, context=context, decode=decode)
    stages = []
    for name, us in by_stage.items():
        if name == "other" and not us:
            continue
        nbytes, flops = costs.get(name, (None, None))
        stages.append(StageTime(name, us, us / total, nbytes / us / 1e3 if nbytes and us else None,
                                flops / us / 1e6 if flops and us else None))
    top = sorted(kernels.values(), key=lambda k: -k.gpu_us)
    return stages, top


def format_stage_table(title: str, stages: list[StageTime], top: list[KernelTime], copy_gbps: float | None,
                       peak_tflops: float | None) -> list[str]:
    """Markdown lines of one profiled pass."""
    total = sum(s.gpu_us for s in stages)
    where = "GPU" if copy_gbps else "CPU"
    lines = [f"#### {title}: {total:.0f} µs of {where} time ({'kernel durations, eager pass' if copy_gbps else 'interpreter'})", "",
             f"| stage | {where} µs | share | GB/s | of copy BW | TFLOP/s | of bf16 peak |", "|---|---|---|---|---|---|---|"]
    for s in stages:
        gb = f"{s.gbps:.0f}" if s.gbps else ""
        gb_frac = f"{s.gbps / copy_gbps:.2f}" if s.gbps and copy_gbps else ""
        tf = f"{s.tflops:.1f}" if s.tflops else ""
        tf_frac = f"{s.tflops / peak_tflops:.2f}" if s.tflops and peak_tflops else ""
        lines.append(f"| {s.stage} | {s.gpu_us:.1f} | {s.share:.1%} | {gb} | {gb_frac} | {tf} | {tf_frac} |")
    if top:
        launches = sum(k.calls for k in top)
        lines += ["", f"{launches} kernel launches (memcpy/memset included), {len(top)} distinct; the 15 longest:",
                  "", "| kernel | stage | calls | GPU µs | share |", "|---|---|---|---|---|"]
        lines += [f"| `{k.name[:90]}` | {', '.join(sorted(k.stages))} | {k.calls} | {k.gpu_us:.1f} | "
                  f"{k.gpu_us / total:.1%} |" for k in top[:15]]
    return lines + [""]


def format_stage_comparison(title: str, with_table: list[StageTime], without: list[StageTime]) -> list[str]:
    """Markdown lines comparing one pass's stage times with the table and without it (where a table loses)."""
    other = {s.stage: s.gpu_us for s in without}
    lines = [f"#### {title}: with the table ÷ without, per stage", "",
             "| stage | with table µs | without µs | with ÷ without |", "|---|---|---|---|"]
    for s in with_table:
        base = other.get(s.stage)
        ratio = f"{s.gpu_us / base:.2f}" if base else ""
        lines.append(f"| {s.stage} | {s.gpu_us:.1f} | {'' if base is None else f'{base:.1f}'} | {ratio} |")
    total, base_total = sum(s.gpu_us for s in with_table), sum(other.values())
    lines.append(f"| total | {total:.1f} | {base_total:.1f} | {total / base_total:.2f} |" if base_total else
                 f"| total | {total:.1f} | | |")
    return lines + [""]


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated by torch since the last reset, GiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def fmt_rate(result: TestResult) -> str:
    """``"123.45 ± 0.67"``."""
    return f"{result.mean:.2f} ± {result.std:.2f}"

