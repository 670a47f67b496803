"""Judging the graphs before they are published: sample inputs, parity against PyTorch, the
latency benchmark (one process per variant), and the rules that choose what is published."""
