import sys; sys.path.insert(0, "/tmp/probe")
import os, json, time
os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/probe/cache_" + str(os.getpid()))
from aot import *
spec = json.loads(sys.argv[1])
dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[spec.pop("dtype")]
total, log = case(dtype=dt, **spec)
for e in log:
    print(json.dumps(e))
print("TOTAL", round(total, 1))
