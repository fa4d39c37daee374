run() { name=$1; shift; ( timeout 300 python3 /tmp/probe/run1.py "$1" > /tmp/probe/out_$name.txt 2>&1; echo "rc=$?" >> /tmp/probe/out_$name.txt ); }
run fp32_d96_bias '{"B":4,"H":2,"Lq":100,"Lk":100,"D":96,"bias_shape":[1,2,100,100],"dtype":"fp32"}' &
run fp32_d48_r32 '{"B":4,"H":2,"Lq":100,"Lk":100,"D":48,"R":32,"dtype":"fp32"}' &
wait
run fp16_d96_r96 '{"B":4,"H":2,"Lq":100,"Lk":100,"D":96,"R":96,"dtype":"fp16"}' &
run fp32_d32_bias '{"B":4,"H":2,"Lq":100,"Lk":100,"D":32,"bias_shape":[1,2,100,100],"mask":true,"dtype":"fp32"}' &
wait
