#!/bin/bash
# Session 12, device call (H200, carry [".devsite"], ~9.5 min): issue 17's fine-tuning target,
# session 4's real-size run with the recycling cycles replayed from CUDA graphs
# (scripts/session10/finetune_graphs.sh 110, graphed run only: session 10 compared its numerics
# with the eager run on an H100, benchmarks/session10/finetune_graphs_h100/).
RUNS=true END_S=${END_S:-570} bash benchmarks/scripts/session10/finetune_graphs.sh 110
