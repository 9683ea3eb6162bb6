"""One measured job in its own process: `python -m bench.worker JOB SPEC.json OUT.json`.

JOB is `tunery` or `trl` (train), `eval` (validation loss of a trained result), `profile` (where a
tunery step's time goes) or `peak` (matmul peaks: square `matmul`, and `F.linear` at the model's
shapes when the spec lists them). The parent reads peak RSS from the process's own rusage (`os.wait4`), so each job is alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    job, spec_path, out_path = argv[0], Path(argv[1]), Path(argv[2])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    if job in ("tunery", "trl"):
        from bench.workload import Workload

        work = Workload(**spec["workload"])
        output_dir = Path(spec["output_dir"])
        if job == "tunery":
            from bench.side_tunery import run_tunery
            result = run_tunery(work, output_dir)
        else:
            from bench.side_trl import run_trl
            result = run_trl(work, output_dir)
    elif job == "profile":
        from bench.side_tunery import profile_tunery
        from bench.workload import Workload

        result = profile_tunery(Workload(**spec["workload"]), Path(spec["output_dir"]), spec["skip"], spec["steps"])
    elif job == "eval":
        from bench.evaluate import validation_loss
        result = validation_loss(**spec)
    elif job == "peak":
        import torch

        from bench.flops import measure_linear_peak, measure_matmul_peak
        if spec.get("threads"):  # the runs' --threads; else torch's default, as the runs have then
            torch.set_num_threads(spec["threads"])
        dtypes = spec.get("dtypes", ["bf16", "fp32"])
        result = {name: measure_matmul_peak(name).to_dict() for name in dtypes}
        result["threads"] = torch.get_num_threads()
        if spec.get("linear_shapes"):  # the peak at the model's own shapes (what MFU is taken against)
            rows = spec.get("tokens", 256)
            for name in dtypes:  # the faster of the row counts given (tunery's pieces may be any of them)
                peaks = [measure_linear_peak(name, spec["linear_shapes"], n) for n in
                         (rows if isinstance(rows, list) else [rows])]
                result[f"linear_{name}"] = max(peaks, key=lambda p: p.flops_per_s).to_dict()
    else:
        print(f"unknown job {job!r}", file=sys.stderr)
        return 2
    result["process_wall_s"] = time.perf_counter() - started
    result["vm_hwm_bytes"] = read_vm_hwm_bytes()  # cross-check of the parent's ru_maxrss
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():  # on a GPU the device's peak is the memory that matters
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        result["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    out_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


def read_vm_hwm_bytes() -> int | None:
    """This process's peak resident set size from /proc (Linux), or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
