"""One-off sweep of hand-picked MoE GEMM configs on a GPU, run once before the tuner existed.

It produced scripts/results/2026-11-21-h100-explore.log (lent H100, Triton 3.6), whose numbers chose the default
configs in search_spaces/moe_gemm.py. Kept as the record of how; use `python -m autotune run` and
scripts/bench_moe_gemm.py for real measurements. Usage: python scripts/sweep_moe_gemm_configs.py [M,M,...]
"""
import os, sys, time, json, inspect, itertools, traceback
sys.path.insert(0, os.getcwd())
import torch, triton, triton.testing
import kernels.moe_gemm as mg
from kernels.moe_gemm import MoeGemmConfig, MoeShape
from autotune.tuning.timing import median_us
from scripts.moe_baselines import dequantized_weights, grouped_mm_call, per_expert_call

print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))
p = torch.cuda.get_device_properties(0)
print({k: getattr(p, k) for k in dir(p) if not k.startswith("_") and "uuid" not in k})
print(triton.runtime.driver.active.utils.get_device_properties(0))
print(inspect.signature(triton.language.dot_scaled))
print("warmup" in dir(mg.launch.__globals__.get("KernelLaunch", object)), hasattr(triton.JITFunction, "warmup"))
print(inspect.signature(triton.testing.do_bench_cudagraph))
# peaks
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
ms = triton.testing.do_bench(lambda: y.copy_(x), return_mode="median")
print(f"copy {2*2**30/ms/1e6:.0f} GB/s")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
print(f"bf16 matmul {2*8192**3/ms/1e9:.0f} TFLOP/s")
del x, y, a, b
L2 = p.L2_cache_size
only = sys.argv[1] if len(sys.argv) > 1 else ""

def cfgs(variant, M):
    out = []
    if M <= 16:
        for deq, bn, bk, st in itertools.product(("dot_scaled", "upcast"), (32, 64, 128), (128, 256), (3,)):
            out.append(dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1, num_warps=4, num_stages=st, dequant=deq))
        for sk in (2, 4):
            out.append(dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=3, dequant="upcast", SPLIT_K=sk, fuse_swiglu=False))
        out.append(dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=3, dequant="upcast", schedule="persistent", programs_per_sm=4))
    else:
        for deq, (bm, bn, bk, w) in itertools.product(("dot_scaled", "upcast"), [(128,128,64,4),(128,128,128,8),(128,256,64,8),(64,128,128,4)]):
            out.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=3, dequant=deq))
    return out

def err(o, r):
    return ((o.float() - r).norm(dim=-1) / r.norm(dim=-1).clamp_min(1e-30)).max().item()

results = []
for variant in ("mlp1", "mlp2"):
    for M in (1, 4, 16, 128, 1024, 8192):
        if only and str(M) not in only.split(","): continue
        shape = MoeShape.for_variant(variant, M=M, hidden=2880, intermediate=2880, E=32, top_k=4)
        chk = mg.make_inputs(variant, shape, dtype=torch.bfloat16, device="cuda", seed=M)
        ref = mg.reference(variant, chk)
        sets = mg.make_timing_inputs(variant, shape, dtype=torch.bfloat16, device="cuda", seed=7, cache_bytes=L2)
        c = mg.cost(variant, sets)
        w = dequantized_weights(sets[0])
        for name, mk in (("grouped_mm", grouped_mm_call), ("per_expert", per_expert_call)):
            try:
                calls = [mk(variant, s, w) for s in sets]
                t = median_us(calls, on_gpu=True)
                print(f"{variant} M={M} torch:{name} {t.median_us:.1f}us {t.method} GB/s={c.bytes/t.median_us/1e3:.0f} TF={c.flops/t.median_us/1e6:.1f}")
            except Exception as e:
                print(f"{variant} M={M} torch:{name} FAILED {type(e).__name__}: {str(e)[:200]}")
        del w
        for cd in cfgs(variant, M):
            if variant == "mlp2": cd = {**cd, "fuse_swiglu": True}
            cfg = MoeGemmConfig(**cd)
            try:
                t0 = time.time()
                o = mg.launch(variant, chk, cfg); torch.cuda.synchronize()
                comp = time.time() - t0
                e = err(o, ref)
                outs = [mg.launches(variant, s, cfg)[0] for s in sets]
                calls = [(lambda s=s, o=o: mg.launch(variant, s, cfg, out=o)) for s, o in zip(sets, outs)]
                t = median_us(calls, on_gpu=True)
                r = dict(variant=variant, M=M, cfg=cd, us=t.median_us, p20=t.p20_us, p80=t.p80_us, method=t.method, sets=t.sets, err=e, comp=comp,
                         gbps=c.bytes/t.median_us/1e3, tflops=c.flops/t.median_us/1e6)
                print(f"{variant} M={M} {t.median_us:8.1f}us GB/s={r['gbps']:6.0f} TF={r['tflops']:6.1f} err={e:.1e} comp={comp:.1f}s sets={t.sets} {cd}", flush=True)
            except Exception as ex:
                r = dict(variant=variant, M=M, cfg=cd, error=f"{type(ex).__name__}: {str(ex)[:300]}")
                print(f"{variant} M={M} FAILED {cd}: {r['error']}", flush=True)
            results.append(r)
json.dump(results, open(os.path.join(os.environ.get("OUT", "/tmp"), "explore.json"), "w"), indent=1)
