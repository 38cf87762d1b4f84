#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-lite/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
timeout 90 python scripts/bench_kernels.py > $OUT/1_kernels.log 2>&1
timeout 110 python scripts/benchmark.py --model opensora --pab pab246 --repeats 1 --warmup 1 > $OUT/2_os_eager.log 2>&1
timeout 140 python -c "from videosys.bench.latte_vs_diffusers import compare_latte; import json; print(json.dumps(compare_latte(repeats=3, loop_repeats=1)))" > $OUT/3_latte_cmp.log 2>&1
timeout 70 python scripts/profile_denoise.py --model latte --denoiser-only --calls 3 --top 30 > $OUT/4_latte_prof.log 2>&1
timeout 80 python scripts/profile_denoise.py --model opensora --denoiser-only --calls 3 --top 30 > $OUT/5_os_prof.log 2>&1
echo done > $OUT/done.log
