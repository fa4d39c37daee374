import sys; sys.path.insert(0, "/tmp/probe")
import os, json, time
from aot import *
CASES = {
 "a_bf16_d128_bias": dict(B=4,H=2,Lq=100,Lk=100,D=128,bias_shape=[1,2,100,100],mask=True),
 "b_bf16_d64_r64": dict(B=4,H=2,Lq=100,Lk=100,D=64,R=64,bias_shape=[1,2,100,100]),
 "c_bf16_d32_r64": dict(B=4,H=2,Lq=100,Lk=100,D=32,R=64,bias_shape=[1,2,100,100],mask=True),
 "d_bf16_wide": dict(B=4,H=2,Lq=100,Lk=100,D=128,R=128,bias_shape=[1,2,100,100]),
 "e_bf16_rowfac": dict(B=4,H=2,Lq=100,Lk=100,D=64,R=64,fb=4,bias_shape=[4,1,100,100]),
 "f_fp32_d48_bias": dict(B=4,H=2,Lq=100,Lk=100,D=48,bias_shape=[1,2,100,100],mask=True,dtype=torch.float32),
 "g_fp32_wide": dict(B=4,H=2,Lq=100,Lk=100,D=128,R=128,bias_shape=[1,2,100,100],dtype=torch.float32),
 "h_fp32_rowbias": dict(B=4,H=2,Lq=100,Lk=100,D=128,bias_shape=[4,1,100,100],dtype=torch.float32),
}
name, tf32 = sys.argv[1], sys.argv[2] == "tf32"
spec = dict(CASES[name]); spec.setdefault("dtype", torch.bfloat16)
total, log = case(tf32=tf32, **spec)
for e in log:
    e.pop("fn"); print(name, json.dumps(e))
print(name, "TOTAL", round(total, 1))
