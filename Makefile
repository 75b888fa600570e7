# Thin aliases for the two quick-start scripts (which need nothing but bash).
.PHONY: lab test bench
lab:
	./scripts/lab
test:
	./scripts/test
bench:
	./scripts/venv test && .venv/bin/python bench/failover.py
